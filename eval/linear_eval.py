"""Per-layer linear (or MLP) evaluation of a frozen backbone: `run_linear_eval(LinearEvalConfig)`.

Two protocols, the same heads and optimizer:
  cached (default): every layer's pooled features of both splits are computed once with the
    deterministic evaluation preprocessing (optionally cached on disk, see eval/features.py); the
    heads then train on the arrays, all layers in one step.
  on_the_fly: the original protocol; each training batch goes through the training preprocessing
    (random crops / flips) and the frozen backbone inside the training step.
The backbone is an export (`hub_module`) or, when `hub_module` is None, a randomly initialised
`architecture` (the random-init baseline); both go through the same `Representation` path.
Writes `<workdir>/results.json` (schema: eval/results.py) and returns the same dict.
"""

import dataclasses
import math
import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import keras
import numpy as np

from core import specs
from core.config import ConfigError
import datasets
from eval import features as features_lib
from eval import heads as heads_lib
from eval import knn as knn_lib
from eval import low_label as low_label_lib
from eval import pooling
from eval import representation as representation_lib
from eval import results as results_lib
import models


@dataclasses.dataclass
class LinearEvalConfig:
  """Everything one evaluation needs; field names follow the original flags where they exist."""
  workdir: Optional[str] = None              # Where results.json goes (required).
  # Data.
  dataset: str = "shapes"
  data_dir: Optional[str] = None
  train_split: str = "train"
  val_split: str = "test"
  # Backbone: an export, or (hub_module None) a random-init architecture.
  hub_module: Optional[str] = None           # Export directory (<pretext workdir>/export).
  architecture: Optional[str] = None         # Random init only (ignored with hub_module).
  filters_factor: Optional[int] = None       # Random init only; None: standard width.
  mode: str = "v2"                           # Random init only.
  last_relu: bool = True                     # Random init only.
  layers: Optional[Tuple[str, ...]] = None   # End points to evaluate; None: all.
  # Features.
  pool_mode: str = "adaptive_max"
  combine_patches: str = "avg_pool"
  max_features: int = pooling.DEFAULT_MAX_FEATURES
  standardize_features: bool = True          # Per-feature mean/std of the training features.
  # Heads and optimisation.
  eval_model: str = "linear"
  channels_hidden: int = 1000
  lr: float = 0.1
  lr_scale_batch_size: int = 256
  batch_size: int = 256
  eval_batch_size: Optional[int] = None      # Feature extraction and evaluation; None: batch_size.
  epochs: float = 30.0
  warmup_epochs: float = 0.0
  decay_epochs: Tuple[float, ...] = (10.0, 20.0)
  lr_decay_factor: float = 0.1
  weight_decay: float = 0.0
  # Preprocessing specs; None: the export's eval_preprocessing (training: the evaluation spec).
  preprocessing: Optional[str] = None        # Training spec, used by on_the_fly only.
  eval_preprocessing: Optional[str] = None
  preprocess_params: Optional[Dict[str, Any]] = None  # datasets.PreprocessConfig fields;
                                                      # None: the export's preprocess_config.
  # Protocol.
  on_the_fly: bool = False
  shuffle_buffer: int = 10_000               # on_the_fly only.
  knn_k: Optional[int] = None                # kNN accuracy with this k; None: no kNN.
  knn_temperature: float = knn_lib.DEFAULT_TEMPERATURE
  train_fraction: Optional[float] = None     # Low-label: this fraction of each class ...
  examples_per_class: Optional[int] = None   # ... or this many examples of each class.
  # Running.
  feature_cache_dir: Optional[str] = None    # None: no disk cache.
  feature_dtype: str = "float32"             # or float16 (half the memory).
  random_seed: int = 0
  force: bool = False                        # Re-run even if results for this config exist.

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def _check(condition: bool, message: str):
  if not condition:
    raise ConfigError(message)


def _positive_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def validate_config(config: LinearEvalConfig) -> None:
  """Raises ConfigError naming the field, the value and the valid choices."""
  _check(bool(config.workdir), "workdir is required: the directory for results.json")
  _check(bool(config.dataset), "dataset is required, e.g. 'shapes' or 'imagenet2012'")
  if config.hub_module is None:
    _check(bool(config.architecture), "give hub_module (an export directory) or, for the "
           "random-init baseline, architecture (e.g. resnet50)")
    _check(bool(config.eval_preprocessing), "the random-init baseline has no export to take "
           "the preprocessing from: set eval_preprocessing, e.g. 'resize,-1_to_1'")
  else:
    _check(isinstance(config.hub_module, str) and bool(config.hub_module),
           f"hub_module must be an export directory, got {config.hub_module!r}")
  for name, choices in (("eval_model", heads_lib.EVAL_MODELS.names()),
                        ("pool_mode", pooling.POOL_MODES),
                        ("combine_patches", pooling.COMBINE_MODES.names()),
                        ("feature_dtype", features_lib.FEATURE_DTYPES)):
    value = getattr(config, name)
    _check(value in choices, f"{name}={value!r} is not valid; choices: {', '.join(choices)}")
  for name in ("channels_hidden", "lr_scale_batch_size", "batch_size", "max_features",
               "shuffle_buffer"):
    value = getattr(config, name)
    _check(_positive_int(value), f"{name} must be a positive integer, got {value!r}")
  _check(config.eval_batch_size is None or _positive_int(config.eval_batch_size),
         f"eval_batch_size must be a positive integer or None, got {config.eval_batch_size!r}")
  _check(config.filters_factor is None or _positive_int(config.filters_factor),
         f"filters_factor must be a positive integer or None, got {config.filters_factor!r}")
  _check(config.lr > 0, f"lr must be positive, got {config.lr}")
  _check(config.epochs > 0 and math.isfinite(config.epochs),
         f"epochs must be a positive number, got {config.epochs}")
  _check(0 <= config.warmup_epochs <= config.epochs,
         f"warmup_epochs must be in [0, epochs={config.epochs}], got {config.warmup_epochs}")
  decay = list(config.decay_epochs)
  _check(decay == sorted(decay), f"decay_epochs must be increasing, got {decay}")
  _check(config.lr_decay_factor > 0, f"lr_decay_factor must be positive, got "
         f"{config.lr_decay_factor}")
  _check(config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}")
  _check(config.knn_k is None or _positive_int(config.knn_k),
         f"knn_k must be a positive integer or None (no kNN), got {config.knn_k!r}")
  _check(config.knn_temperature > 0,
         f"knn_temperature must be positive, got {config.knn_temperature}")
  _check(config.train_fraction is None or config.examples_per_class is None,
         f"give at most one of train_fraction ({config.train_fraction}) and "
         f"examples_per_class ({config.examples_per_class})")
  _check(config.train_fraction is None or 0 < config.train_fraction <= 1,
         f"train_fraction must be in (0, 1], got {config.train_fraction}")
  _check(config.examples_per_class is None or _positive_int(config.examples_per_class),
         f"examples_per_class must be a positive integer, got {config.examples_per_class!r}")
  _check(not (config.on_the_fly and _low_label(config)),
         "train_fraction / examples_per_class need the cached protocol (on_the_fly=False): the "
         "labelled subset is drawn from the extracted training features")
  _check(config.layers is None or (len(config.layers) > 0 and
                                   all(isinstance(n, str) for n in config.layers)),
         f"layers must be None (all) or a non-empty list of end point names, got {config.layers!r}")
  _check(config.preprocess_params is None or isinstance(config.preprocess_params, dict),
         f"preprocess_params must be a dict or None, got {config.preprocess_params!r}")


def _low_label(config: LinearEvalConfig) -> bool:
  return config.train_fraction is not None or config.examples_per_class is not None


def load_representation(config: LinearEvalConfig) -> representation_lib.Representation:
  """The backbone under evaluation, restricted to `config.layers`."""
  if config.hub_module is not None:
    rep = representation_lib.load_export(config.hub_module)
  else:
    # On patches, the backbone gets the strides the patch methods train with, so that the
    # baseline and the trained patch backbones differ in their weights only.
    patches = specs.makes_patches(config.eval_preprocessing or "")
    rep = representation_lib.random_init(
        config.architecture, filters_factor=config.filters_factor, mode=config.mode,
        seed=config.random_seed, last_relu=config.last_relu,
        **(models.PATCH_STRIDES if patches else {}))
  return rep.select(config.layers)


def _preprocess_config(params: Dict[str, Any]):
  params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
  return datasets.PreprocessConfig(**params)


class _Data:
  """The data calls of one evaluation, in one place."""

  def __init__(self, config: LinearEvalConfig, eval_spec: str, train_spec: str,
               params: Dict[str, Any]):
    self.config = config
    self.eval_spec, self.train_spec, self.params = eval_spec, train_spec, params
    self.preprocess_config = _preprocess_config(params)

  def batches(self, split: str, is_training: bool):
    c = self.config
    spec = self.train_spec if is_training else self.eval_spec
    preprocess_fn = datasets.get_preprocess_fn(spec, is_training, self.preprocess_config)
    kwargs = dict(shuffle_buffer=c.shuffle_buffer, seed=c.random_seed) if is_training else {}
    return datasets.get_data(
        c.dataset, split, is_training=is_training, preprocess_fn=preprocess_fn,
        batch_size=c.batch_size if is_training else (c.eval_batch_size or c.batch_size),
        data_dir=c.data_dir, **kwargs)

  def cache_parts(self, rep, split: str) -> Dict[str, Any]:
    c = self.config
    return dict(representation=rep.fingerprint, dataset=c.dataset,
                data_dir=os.path.abspath(c.data_dir) if c.data_dir else None, split=split,
                preprocessing=self.eval_spec, preprocess_params=self.params)


def _repeat(make_batches):
  """Batches of a (possibly finite) dataset, re-iterated for as long as asked."""
  while True:
    count = 0
    for batch in make_batches():
      count += 1
      yield batch["image"], batch["label"]
    if not count:
      raise ValueError("the training dataset is empty")


def run_linear_eval(config: LinearEvalConfig) -> Dict[str, Any]:
  """Evaluates every layer; writes and returns the results (see eval/results.py)."""
  start = time.time()
  validate_config(config)
  if not config.force and results_lib.results_exist(config.workdir, config):
    logging.info("results for this config exist in %s; skipping (force=True re-runs)",
                 config.workdir)
    return results_lib.read_results(config.workdir)

  rep = load_representation(config)
  eval_spec = config.eval_preprocessing or rep.info.get("eval_preprocessing")
  if not eval_spec:
    raise ConfigError(f"the export {config.hub_module!r} records no eval_preprocessing; "
                      "set eval_preprocessing")
  train_spec = config.preprocessing or eval_spec
  params = config.preprocess_params
  if params is None:
    params = dict(rep.info.get("preprocess_config") or {})
  if not config.on_the_fly and config.preprocessing:
    logging.warning("preprocessing=%r is only used with on_the_fly; the cached protocol uses "
                    "eval_preprocessing=%r for both splits", config.preprocessing, eval_spec)
  try:
    data = _Data(config, eval_spec, train_spec, params)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"preprocess_params={params!r}: {e}") from None
  for name, spec in (("eval_preprocessing", eval_spec), ("preprocessing", train_spec)):
    try:
      datasets.validate_spec(spec, data.preprocess_config)
    except ValueError as e:
      raise ConfigError(f"{name}={spec!r}: {e}") from None
  num_classes = int(datasets.get_dataset_info(config.dataset, config.data_dir).num_classes)
  extractor = features_lib.FeatureExtractor(rep, config.pool_mode, config.combine_patches,
                                            config.max_features)
  keras.utils.set_random_seed(config.random_seed)

  def features_of(split):
    num = datasets.get_num_examples(config.dataset, split, config.data_dir)
    return features_lib.extract_or_load(
        extractor, lambda: data.batches(split, is_training=False), config.feature_cache_dir,
        data.cache_parts(rep, split), dtype=config.feature_dtype, num_examples=num,
        description=f"{config.dataset}/{split}")

  times = dict(feature_extraction_s=0.0, head_training_s=0.0, knn_s=0.0)
  train = test = None
  low_label = None
  if not config.on_the_fly or config.knn_k:
    t = time.time()
    train, test = features_of(config.train_split), features_of(config.val_split)
    times["feature_extraction_s"] = time.time() - t
    if _low_label(config):
      indices = low_label_lib.low_label_indices(
          train.labels, config.train_fraction, config.examples_per_class, config.random_seed)
      train = train.subset(indices)
      low_label = dict(train_fraction=config.train_fraction,
                       examples_per_class=config.examples_per_class, seed=config.random_seed,
                       num_train_examples=train.num_examples)
      logging.info("low-label evaluation: %d labelled training examples", train.num_examples)

  t = time.time()
  if config.on_the_fly:
    metrics, num_train, dims = _train_on_the_fly(config, data, extractor, num_classes)
    num_val = datasets.get_num_examples(config.dataset, config.val_split, config.data_dir)
  else:
    metrics = _train_cached(config, train, test, num_classes)
    num_train, dims = train.num_examples, train.dims
    num_val = test.num_examples
  times["head_training_s"] = time.time() - t

  layers = {name: dict(dim=dims[name], **metrics[name]) for name in extractor.layers}
  if config.knn_k:
    t = time.time()
    knn = knn_lib.knn_per_layer(train.features, train.labels, test.features, test.labels,
                                num_classes, config.knn_k, config.knn_temperature)
    times["knn_s"] = time.time() - t
    for name in extractor.layers:
      layers[name]["knn_top1"] = knn[name]
  times["total_s"] = time.time() - start

  info = rep.info
  source = dict(hub_module=info.get("source"), task=info.get("task"),
                architecture=info.get("architecture"), filters_factor=info.get("filters_factor"),
                mode=info.get("mode"), eval_preprocessing=eval_spec)
  dataset = dict(name=config.dataset, train_split=config.train_split,
                 val_split=config.val_split, num_classes=num_classes,
                 num_train_examples=num_train, num_val_examples=num_val)
  results = results_lib.build_results(config.to_dict(), source, dataset, extractor.layers,
                                      layers, times, low_label)
  path = results_lib.write_results(config.workdir, results)
  logging.info("per-layer results (%s):\n%s", path, results_lib.format_table(results))
  return results


def _train_cached(config: LinearEvalConfig, train: features_lib.FeatureSet,
                  test: features_lib.FeatureSet, num_classes: int) -> Dict[str, Dict[str, float]]:
  """Heads trained and evaluated on in-memory features."""
  stats = heads_lib.feature_stats(train.features) if config.standardize_features else None
  probes = heads_lib.Probes(train.dims, num_classes, config.eval_model, config.channels_hidden,
                            config.weight_decay, config.random_seed, stats)
  steps_in_epoch = heads_lib.steps_per_epoch(train.num_examples, config.batch_size)
  optimizer = _optimizer(config, steps_in_epoch)
  heads_lib.train_probes_on_arrays(
      probes, optimizer, train.features, train.labels, config.batch_size, config.random_seed,
      heads_lib.num_train_steps(config.epochs, steps_in_epoch))
  return heads_lib.evaluate_probes(
      probes, heads_lib.array_eval_batches(test.features, test.labels,
                                           config.eval_batch_size or config.batch_size))


def _train_on_the_fly(config: LinearEvalConfig, data: _Data,
                      extractor: features_lib.FeatureExtractor, num_classes: int):
  """Heads trained on features computed inside each step from augmented training batches."""
  num_train = datasets.get_num_examples(config.dataset, config.train_split, config.data_dir)
  stats = None
  if config.standardize_features:
    # One pass over the training split with the evaluation preprocessing, as in the cached path.
    acc = heads_lib.StatsAccumulator()
    for images, _ in _one_pass(data, config.train_split):
      acc.update({k: v.numpy() for k, v in extractor(images).items()})
    stats = acc.result()
  else:
    images, _ = next(_one_pass(data, config.train_split))
    extractor(images)  # Builds the extractor: its feature_dims.
  dims = dict(extractor.feature_dims)
  probes = heads_lib.Probes(dims, num_classes, config.eval_model, config.channels_hidden,
                            config.weight_decay, config.random_seed, stats)
  steps_in_epoch = heads_lib.steps_per_epoch(num_train, config.batch_size)
  optimizer = _optimizer(config, steps_in_epoch)
  heads_lib.train_probes(
      probes, optimizer, _repeat(lambda: data.batches(config.train_split, is_training=True)),
      heads_lib.num_train_steps(config.epochs, steps_in_epoch), feature_fn=extractor)
  metrics = heads_lib.evaluate_probes(probes, _one_pass(data, config.val_split),
                                      feature_fn=extractor)
  return metrics, num_train, dims


def _one_pass(data: _Data, split: str):
  for batch in data.batches(split, is_training=False):
    yield batch["image"], batch["label"]


def _optimizer(config: LinearEvalConfig, steps_in_epoch: int):
  return heads_lib.make_optimizer(config.lr, config.batch_size, config.lr_scale_batch_size,
                                  steps_in_epoch, config.warmup_epochs, config.decay_epochs,
                                  config.lr_decay_factor)
