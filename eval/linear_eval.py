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
import shutil
import time
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from core import architectures
from core import files
from core import options
from core import specs
from core.errors import ConfigError
from core.options import require
import datasets
from eval import feature_stats as stats_lib
from eval import features as features_lib
from eval import heads as heads_lib
from eval import knn as knn_lib
from eval import low_label as low_label_lib
from eval import pooling
from eval import probing
from eval import representation as representation_lib
from eval import store as store_lib
from eval import results as results_lib
from training import footprint as footprint_lib
from training import run_record
from training import schedules
from training import validation


class _EvalConfigMethods:

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


# Everything one evaluation needs: a field per option of core/options.py's evaluation config
# (named and defaulted as the flag; architecture, filters_factor, mode, last_relu are those of a
# random-init backbone, hub_module None), then settings that have no flag.
LinearEvalConfig = options.make_config("LinearEvalConfig", options.EVAL, _EvalConfigMethods,
                                       __name__, extra=[
    ("layers", Optional[Tuple[str, ...]], None),        # End points to evaluate; None: all.
    ("max_features", int, pooling.DEFAULT_MAX_FEATURES),
    ("standardize_features", bool, True),                # Per-feature mean/std of the training
                                                          # features.
    ("preprocess_params", Optional[Dict[str, Any]], None),  # datasets.PreprocessConfig fields;
                                                          # None: the export's preprocess_config.
    ("knn_temperature", float, knn_lib.DEFAULT_TEMPERATURE),
])


def evaluation_kwargs(values: Mapping[str, Any], config_name: str) -> Dict[str, Any]:
  """The fields of an evaluation config (EVAL, FINE_TUNE) from the option values
  (core/options.py: every option's value, as train_and_eval.py reads them from the flags):
  hub_module 'random_init' is the random-init baseline of --architecture; its preprocessing
  parameters come from the size and patch flags."""
  kwargs = options.config_kwargs(values, config_name)
  random_init = values["hub_module"] == options.RANDOM_INIT
  kwargs["hub_module"] = None if random_init else values["hub_module"]
  kwargs["architecture"] = values["architecture"] if random_init else None
  if "weight_decay" in kwargs and values["weight_decay"] is None:
    kwargs["weight_decay"] = options.OPTIONS["weight_decay"].default_for(config_name)
  if random_init or specs.sets_own_params(values):
    kwargs["preprocess_params"] = {k: values[k] for k in specs.EVAL_PARAM_FLAGS}
  return kwargs


def config_from_values(values: Mapping[str, Any]) -> "LinearEvalConfig":
  """The per-layer evaluation's config of the option values (`evaluation_kwargs`)."""
  return LinearEvalConfig(**evaluation_kwargs(values, options.EVAL))


def validate_source(config, config_name: str) -> None:
  """The checks of its values that every evaluation of an export (per-layer, fine-tuning, CKA)
  shares: where the results go, the backbone (an export or, for the baseline, an architecture),
  every option's value, the labelled subset. Then each evaluation's own, then
  `check_sources`."""
  require(bool(config.workdir), "--workdir is required: the directory for results.json")
  require(bool(config.dataset), "--dataset is required, e.g. 'shapes' or 'imagenet2012'")
  options.check_values(config, config_name)
  require(config.train_fraction is None or config.examples_per_class is None,
          f"give at most one of train_fraction ({config.train_fraction}) and "
          f"examples_per_class ({config.examples_per_class})")
  require(config.preprocess_params is None or isinstance(config.preprocess_params, dict),
          f"preprocess_params must be a dict or None, got {config.preprocess_params!r}")
  if config.hub_module is None:
    require(bool(config.architecture), "give --hub_module (an export directory) or, for the "
            f"random-init baseline, --hub_module={options.RANDOM_INIT} and --architecture "
            f"(one of {', '.join(options.OPTIONS['architecture'].choices)})")
    require(bool(config.eval_preprocessing), "the random-init baseline has no export to take "
            "the preprocessing from: set eval_preprocessing, e.g. 'resize,-1_to_1'")
  else:
    require(isinstance(config.hub_module, str) and bool(config.hub_module),
            f"hub_module must be an export directory, got {config.hub_module!r}")


def check_sources(config, export_pending: bool = False, check_data: bool = True,
                  probe_data: bool = True) -> None:
  """After an evaluation's own checks: that its export is there (unless `export_pending`: a step
  before this one writes it), and with `check_data` that its data is (`probe_data`: as
  `check_probe_data`, else the --val_split alone)."""
  if config.hub_module is not None and not export_pending:
    path = representation_lib.export_dir_of(config.hub_module)
    require(os.path.isdir(path), f"--hub_module={config.hub_module}: no such directory; give "
            "the export/ folder that pretext training writes in its workdir (or the workdir)")
    require(os.path.exists(os.path.join(path, "saved_model.pb")),
            f"--hub_module={config.hub_module} is not an export: {path} has no saved_model.pb "
            f"(it holds: {', '.join(sorted(os.listdir(path))[:12]) or 'nothing'}); give the "
            "export/ folder that pretext training writes in its workdir")
  if config.eval_preprocessing and config.preprocess_params is not None:
    eval_data(config, {})  # Its input is known without the export: ops and parameters checked.
  if check_data and probe_data:
    check_probe_data(config)


def require_suite_backbone(hub_module: str, why: str) -> Dict[str, Any]:
  """The export_info of the export at `hub_module`; ConfigError where it records no architecture
  of the suite's (a backbone made elsewhere, eval/adapter.py), which `why` needs rebuilt."""
  info = files.read_export_info(representation_lib.export_dir_of(hub_module), missing_ok=True)
  architecture = info.get("architecture")
  require(architecture in architectures.ARCHITECTURES,
          f"--hub_module={hub_module}: its backbone ({architecture or 'no architecture recorded'}) "
          f"is not one of the suite's architectures ({', '.join(architectures.ARCHITECTURES)}), "
          f"and {why} rebuilds it from them; the per-layer probes and CKA between two exports "
          "take it")
  return info


def check_probe_data(config) -> None:
  """The data of a classifier trained on one split and tested on another (probes,
  fine-tuning): both splits there and not empty, and at least two classes."""
  for flag in ("train_split", "val_split"):
    validation.check_split(config.dataset, config.data_dir, flag, getattr(config, flag),
                           why="the evaluation")
  validation.check_classes(config.dataset, config.data_dir,
                           {"train_split": config.train_split, "val_split": config.val_split},
                           "a classifier of the classes")


def validate_config(config: LinearEvalConfig, check_data: bool = True,
                    export_pending: bool = False) -> None:
  """Raises ConfigError naming the field, the value and the valid choices; with `check_data`,
  also for the data (`check_probe_data`)."""
  validate_source(config, options.EVAL)
  require(not (config.feature_cache_dir and config.feature_cache != "memory"),
          f"--feature_cache={config.feature_cache} and --feature_cache_dir="
          f"{config.feature_cache_dir}: give one (the folder of your own is shared and kept)")
  require(not (config.on_the_fly and len(probing.settings_of(config)) > 1),
          f"--on_the_fly trains one head per layer, on the whole training split: give one "
          f"--probe_lrs and one --probe_weight_decays (got {len(config.probe_lrs)} and "
          f"{len(config.probe_weight_decays)})")
  require(options.is_int(config.max_features) and config.max_features > 0,
          f"max_features must be a positive integer, got {config.max_features!r}")
  require(config.knn_temperature > 0,
          f"knn_temperature must be positive, got {config.knn_temperature}")
  require(not (config.on_the_fly and is_low_label(config)),
          "train_fraction / examples_per_class need the cached protocol (on_the_fly=False): the "
          "labelled subset is drawn from the extracted training features")
  require(config.layers is None or (len(config.layers) > 0 and
                                    all(isinstance(n, str) for n in config.layers)),
          f"layers must be None (all) or a non-empty list of end point names, got "
          f"{config.layers!r}")
  check_sources(config, export_pending, check_data)


def is_low_label(config) -> bool:
  return config.train_fraction is not None or config.examples_per_class is not None


def _random_init_kwargs(config) -> Dict[str, Any]:
  """The model settings of a random-init backbone beyond architecture, width and version."""
  return dict({name: getattr(config, name) for name in architectures.MODEL_SETTINGS
               if name != "mode"},  # random_init takes the mode itself.
              **representation_lib.backbone_strides(config.eval_preprocessing or ""))


def load_representation(config: LinearEvalConfig) -> representation_lib.Representation:
  """The backbone under evaluation, restricted to `config.layers`; a ConfigError where the
  export cannot be used."""
  if config.hub_module is not None:
    try:
      rep = representation_lib.load_export(config.hub_module)
    except (OSError, ValueError) as e:
      raise ConfigError(f"--hub_module={config.hub_module}: {e}") from None
  else:
    rep = representation_lib.random_init(
        config.architecture, filters_factor=config.filters_factor, mode=config.mode,
        seed=config.random_seed, **_random_init_kwargs(config))
  try:
    return rep.select(config.layers)
  except ValueError as e:
    raise ConfigError(f"layers: {e}") from None


def source_fingerprint(config) -> Optional[str]:
  """The fingerprint of the backbone an evaluation config names (None: no export there), as its
  Representation has it, without loading it."""
  if config.hub_module is not None:
    return files.export_fingerprint(representation_lib.export_dir_of(config.hub_module))
  return representation_lib.random_init_fingerprint(
      config.architecture, config.filters_factor, config.mode, config.random_seed,
      _random_init_kwargs(config))


def preprocess_config_of(params: Dict[str, Any]):
  """The datasets.PreprocessConfig of preprocessing parameters as JSON and TOML give them."""
  params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
  return datasets.PreprocessConfig(**params)


class EvalData:
  """The data calls of one evaluation, in one place: the test split with the deterministic
  `eval_spec`, the training split with `train_spec` (augmenting when `is_training`)."""

  def __init__(self, config, eval_spec: str, train_spec: str, params: Dict[str, Any]):
    self.config = config
    self.eval_spec, self.train_spec, self.params = eval_spec, train_spec, params
    self.preprocess_config = preprocess_config_of(params)

  def batches(self, split: str, is_training: bool, indices=None, batch_size=None,
              input_context=None):
    """`batch_size`: per input pipeline (default: the config's); `input_context`: this
    pipeline's part of the split, as in datasets.get_data."""
    c = self.config
    spec = self.train_spec if is_training else self.eval_spec
    preprocess_fn = datasets.get_preprocess_fn(spec, is_training, self.preprocess_config)
    kwargs = dict(shuffle_buffer=c.shuffle_buffer, seed=c.random_seed) if is_training else {}
    if batch_size is None:
      batch_size = c.batch_size if is_training else (c.eval_batch_size or c.batch_size)
    return datasets.get_data(
        c.dataset, split, is_training=is_training, preprocess_fn=preprocess_fn,
        batch_size=batch_size, data_dir=c.data_dir, indices=indices,
        input_context=input_context, **kwargs)

  def cache_parts(self, rep, split: str) -> Dict[str, Any]:
    c = self.config
    return dict(representation=rep.fingerprint, dataset=c.dataset,
                data_dir=os.path.abspath(c.data_dir) if c.data_dir else None, split=split,
                preprocessing=self.eval_spec, preprocess_params=self.params)


def eval_data(config, info: Mapping[str, Any]) -> EvalData:
  """The data of an evaluation of the export described by `info` (export_info.json): its
  evaluation preprocessing and parameters unless the config sets them; checked."""
  eval_spec = config.eval_preprocessing or info.get("eval_preprocessing")
  if not eval_spec:
    raise ConfigError(f"the export {config.hub_module!r} records no eval_preprocessing; "
                      "set eval_preprocessing")
  train_spec = config.preprocessing or eval_spec
  params = config.preprocess_params
  if params is None:
    params = dict(info.get("preprocess_config") or {})
  try:
    data = EvalData(config, eval_spec, train_spec, params)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"preprocess_params={params!r}: {e}") from None
  own = str(info.get("eval_preprocessing") or "")
  for name, spec in (("eval_preprocessing", eval_spec), ("preprocessing", train_spec)):
    try:
      datasets.validate_spec(spec, data.preprocess_config)
    except ValueError as e:
      raise ConfigError(f"{name}={spec!r}: {e}") from None
    missing = specs.missing_input_ops(own, spec)
    if missing:
      raise ConfigError(f"{name}={spec!r} lacks {', '.join(map(repr, missing))}, which makes "
                        f"the input the export's backbone was trained on (its own evaluation "
                        f"preprocessing: {own!r}); add it where that has it")
  return data


def check_input(rep: representation_lib.Representation, data: EvalData, split: str) -> None:
  """That the backbone takes the images the evaluation preprocessing makes (the sizes its export's
  signature fixes; per patch for patch inputs), from the pipeline's element shape, before any
  image is read; a ConfigError naming both otherwise."""
  spec = getattr(data.batches(split, is_training=False), "element_spec", None)
  if isinstance(spec, dict) and "image" in spec:
    check_input_shape(rep.info, data.eval_spec, spec["image"].shape.as_list()[1:])


def check_input_shape(info: Mapping[str, Any], eval_spec: str, shape) -> None:
  """That an export described by `info` (export_info.json) takes examples of `shape` ([H,W,C],
  or [P,H,W,C]: each patch goes in alone) that `eval_spec` makes; a ConfigError otherwise."""
  want = info.get("input_shape")
  if not want:
    return
  shape = list(shape[1:]) if len(shape) == 4 else list(shape)
  if len(shape) != len(want) or any(w is not None and s is not None and w != s
                                    for w, s in zip(want, shape)):
    shown = lambda dims: "x".join("?" if d is None else str(d) for d in dims)
    hint = "set --eval_preprocessing and its sizes to what the export takes"
    own = str(info.get("eval_preprocessing") or "")
    if specs.makes_patches(own) and not specs.makes_patches(eval_spec):
      hint = (f"its export takes patches (trained on {own!r}): probe it on patches of each "
              f"image, each patch alone: an --eval_preprocessing with {specs.PATCH_OP!r} and sizes "
              f"that cut {shown(want)} patches (on ImageNet: "
              "--flagfile=configs/evaluation/imagenet_patches.flags)")
    raise ConfigError(
        f"--hub_module={info.get('source')} takes images of {shown(want)} (its export's "
        f"input), but the evaluation preprocessing {eval_spec!r} makes {shown(shape)}; "
        f"{hint}")


def source_info(config, pending: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """What export_info.json says of the backbone an evaluation config names: the export's,
  `pending`'s where a step before this one writes the export (training/export.describe), or the
  random-init baseline's facts."""
  if config.hub_module is None:
    return dict(source=options.RANDOM_INIT, task=options.RANDOM_INIT,
                architecture=config.architecture, filters_factor=config.filters_factor,
                **{name: getattr(config, name) for name in architectures.MODEL_SETTINGS})
  if pending is not None:
    return dict(pending, source=os.path.abspath(representation_lib.export_dir_of(
        config.hub_module)))
  path = representation_lib.export_dir_of(config.hub_module)
  return dict(files.read_export_info(path), source=os.path.abspath(path))


def footprint(config, info: Mapping[str, Any]) -> footprint_lib.Step:
  """The estimate of this evaluation (its checks passed) of the backbone `info` describes
  (`source_info`): extraction on one device; in host memory the heads and their batches (within
  --probe_memory_gb where given) and, without a store on disk, the features; the store on
  disk. A ConfigError where the export does not take the evaluation's input."""
  if info.get("architecture") not in architectures.ARCHITECTURES:
    require_suite_backbone(config.hub_module, "the estimate of its memory")
  data = eval_data(config, info)
  shape = footprint_lib.example_shape(config, config.val_split, False, data.eval_spec,
                                      data.preprocess_config)
  check_input_shape(info, data.eval_spec, shape)
  width = info.get("filters_factor") or architectures.standard_width(info["architecture"])
  backbone = backbone_footprint(info, data.eval_spec, shape, "float32")
  layers = config.layers or [n for n in backbone.end_point_shapes if n != architectures.LOGITS]
  shapes = backbone.end_points(width)
  patches = shape[0] if len(shape) == 4 and config.combine_patches == "concat" else 1
  dims = {name: patches * pooling.pooled_shape(shapes[name], config.pool_mode,
                                               config.max_features, config.token_pooling)
          for name in layers}
  per = sum(dims.values()) * np.dtype(config.feature_dtype).itemsize
  num_train = datasets.get_num_examples(config.dataset, config.train_split, config.data_dir)
  num_val = datasets.get_num_examples(config.dataset, config.val_split, config.data_dir)
  host = footprint_lib.pipeline_bytes(config.eval_batch_size or config.batch_size,
                                      4 * math.prod(shape))
  features = per * (num_train + num_val)
  if not feature_cache_dir(config):
    host += features  # Held in memory: no store on disk.
  if not config.on_the_fly:  # The heads and their batches, within the budget.
    num_classes = int(datasets.get_dataset_info(config.dataset, config.data_dir).num_classes)
    need = probing.reading(config, dims, np.dtype(config.feature_dtype).itemsize, num_classes,
                           None).need_bytes
    if config.probe_memory_gb is not None:
      need = min(need, int(config.probe_memory_gb * 2**30))
    host += need
  features = features if feature_cache_dir(config) else 0
  batch = config.eval_batch_size or config.batch_size
  images = batch * (shape[0] if len(shape) == 4 else 1)
  return footprint_lib.Step(
      kind="extraction", replicas=1, params=backbone.params(width),
      device_bytes=footprint_lib.inference_bytes(backbone, width, images),
      host_bytes=int(host),
      disk_bytes=int(features) if config.feature_cache != "workdir" else 0,
      scratch_bytes=int(features) if config.feature_cache == "workdir" else 0,
      what=f"features of {info['architecture']} w{width} for "
           f"{footprint_lib.describe_images(batch, shape)}; {per * num_train / 2**30:.2f} + "
           f"{per * num_val / 2**30:.2f} GiB of features of {num_train} + {num_val} examples")


def backbone_footprint(info: Mapping[str, Any], eval_spec: str, shape, precision: str,
                       training: bool = False, sync_bn: bool = False) -> footprint_lib.Backbone:
  """The measured footprint of the backbone `info` describes, on examples of `shape` (with
  `training`, of its training step too, its batch norm synchronised with `sync_bn`)."""
  def build(width):
    model = representation_lib.backbone_model(dict(info), eval_spec, filters_factor=width,
                                              sync_bn=sync_bn)
    model(tf.zeros([1, *shape[-3:]]), training=False)
    return model

  key = ("evaluation", info["architecture"], info.get("mode"), info.get("last_relu", True),
         tuple(sorted(representation_lib.backbone_strides(eval_spec).items())), sync_bn)
  return footprint_lib.measure(key, build, shape, precision, training)


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
  reused = results_lib.skip_or_set_aside(config.workdir, config, source_fingerprint(config),
                                         logging.info)
  if reused is not None:
    return reused

  run_record.make_repeatable(config.random_seed, config.deterministic)
  rep = load_representation(config)
  data = eval_data(config, rep.info)
  check_input(rep, data, config.val_split)
  if not config.on_the_fly and config.preprocessing:
    logging.warning("preprocessing=%r is only used with on_the_fly; the cached protocol uses "
                    "eval_preprocessing=%r for both splits", config.preprocessing, data.eval_spec)
  eval_spec = data.eval_spec
  num_classes = int(datasets.get_dataset_info(config.dataset, config.data_dir).num_classes)
  extractor = features_lib.FeatureExtractor(rep, config.pool_mode, config.combine_patches,
                                            config.max_features, config.token_pooling)
  keras.utils.set_random_seed(config.random_seed)
  cache_dir = feature_cache_dir(config)
  budget = probe_budget(config)
  sizes = {split: datasets.get_num_examples(config.dataset, split, config.data_dir)
           for split in (config.train_split, config.val_split)}
  extractor.build(_example_shape(data, config.val_split))
  check_budget(config, extractor.feature_dims, num_classes, budget, sizes, cache_dir)

  def features_of(split):
    def batches(first):
      indices = np.arange(first, sizes[split]) if first else None
      return data.batches(split, is_training=False, indices=indices)
    return features_lib.extract(
        extractor, batches, cache_dir, data.cache_parts(rep, split), dtype=config.feature_dtype,
        num_examples=sizes[split], description=f"{config.dataset}/{split}")

  times = dict(feature_extraction_s=0.0, head_training_s=0.0, knn_s=0.0)
  train = test = rows = None
  low_label = None
  if not config.on_the_fly or config.knn_k:
    t = time.time()
    train, test = features_of(config.train_split), features_of(config.val_split)
    times["feature_extraction_s"] = time.time() - t
    # Stores on disk that fit in half the budget together are read into memory (the other half:
    # the heads and their batches).
    if train.num_examples * train.row_bytes() + test.num_examples * test.row_bytes() <= \
        budget // 2:
      train, test = store_lib.in_memory(train, budget), store_lib.in_memory(test, budget)
    held = sum(s.num_examples * s.row_bytes() for s in (train, test)
               if isinstance(s, store_lib.MemoryStore))
    budget -= held  # What the heads, their batches and kNN may take beside the stores in memory.
    rows = np.arange(train.num_examples)
    if is_low_label(config):
      rows = low_label_lib.low_label_indices(
          train.labels, config.train_fraction, config.examples_per_class, config.random_seed)
      low_label = dict(train_fraction=config.train_fraction,
                       examples_per_class=config.examples_per_class, seed=config.random_seed,
                       num_train_examples=len(rows))
      logging.info("low-label evaluation: %d labelled training examples", len(rows))

  knn = None
  if config.knn_k:
    t = time.time()
    knn = knn_lib.knn_per_layer(train, test, num_classes, config.knn_k, config.knn_temperature,
                                rows, memory_bytes=budget)
    times["knn_s"] = time.time() - t

  t = time.time()
  if config.on_the_fly:
    metrics, num_train, dims = _train_on_the_fly(config, data, extractor, num_classes)
    num_val = sizes[config.val_split]
  else:
    num_train, dims, num_val = len(rows), train.dims, test.num_examples
    metrics = probing.probe(config, train, test, rows, num_classes, budget, times)
  times["head_training_s"] = time.time() - t

  layers = {name: dict(dim=dims[name], **metrics[name]) for name in extractor.layers}
  if knn is not None:
    for name in extractor.layers:
      layers[name]["knn_top1"] = knn[name]
  times["total_s"] = time.time() - start

  source = dict(describe_source(rep.info, eval_spec), fingerprint=rep.fingerprint)
  dataset = dict(name=config.dataset, train_split=config.train_split,
                 val_split=config.val_split, num_classes=num_classes,
                 num_train_examples=num_train, num_val_examples=num_val)
  results = results_lib.build_results(
      config.to_dict(), source, dataset, extractor.layers, layers, times, low_label,
      run=run_record.record(config.random_seed, deterministic=config.deterministic))
  results_lib.write_results(config.workdir, results)
  for store in (train, test):
    if isinstance(store, store_lib.DiskStore):
      store.close()
  del train, test
  if config.feature_cache == "workdir" and cache_dir and os.path.isdir(cache_dir):
    shutil.rmtree(cache_dir)
    logging.info("removed the feature cache %s (--feature_cache=keep keeps it)", cache_dir)
  return results


def _example_shape(data: EvalData, split: str):
  """One example's image shape from the pipeline's element spec (a pipeline without one: its
  first batch)."""
  batches = data.batches(split, is_training=False)
  spec = getattr(batches, "element_spec", None)
  if isinstance(spec, dict) and "image" in spec:
    return spec["image"].shape.as_list()[1:]
  return list(np.shape(next(iter(batches))["image"])[1:])


def probe_budget(config) -> int:
  """The bytes the probes' features and heads may take (--probe_memory_gb, or the default of
  store_lib.default_budget)."""
  if config.probe_memory_gb is not None:
    return int(config.probe_memory_gb * 2**30)
  return store_lib.default_budget()


def check_budget(config, dims: Mapping[str, int], num_classes: int, budget: Optional[int],
                 sizes: Mapping[str, int], cache_dir: Optional[str]) -> None:
  """Before any extraction: that the features kept in memory (without a store on disk) and the
  heads of each layer fit the budget; a ConfigError naming what does not, and its size."""
  itemsize = np.dtype(config.feature_dtype).itemsize
  in_memory = 0
  if cache_dir is None:
    in_memory = sum(dims.values()) * itemsize * sum(sizes.values())
    if in_memory > budget:
      raise ConfigError(
          f"the features of {sum(sizes.values())} examples ({sum(dims.values())} per example, "
          f"{config.feature_dtype}) take {in_memory / 2**30:.2f} GiB in memory, over the probes' "
          f"budget of {budget / 2**30:.2f} GiB (--probe_memory_gb); keep them on disk with "
          "--feature_cache=workdir (or --feature_cache_dir), or raise --probe_memory_gb")
  if config.on_the_fly:
    return
  try:
    probing.reading(config, dims, itemsize, num_classes, budget - in_memory)
  except ValueError as e:
    raise ConfigError(f"{e}; raise --probe_memory_gb, or use fewer --probe_lrs and "
                      "--probe_weight_decays, or a smaller --max_features") from None


def feature_cache_dir(config: LinearEvalConfig) -> Optional[str]:
  """Where the features of an evaluation are cached on disk: --feature_cache_dir, or
  <workdir>/feature_cache with --feature_cache=workdir or keep; None: in memory only."""
  if config.feature_cache_dir:
    return config.feature_cache_dir
  if config.feature_cache == "memory":
    return None
  return os.path.join(config.workdir, files.FEATURE_CACHE_DIR)


def describe_source(info: Mapping[str, Any], eval_spec: str) -> Dict[str, Any]:
  """What a result file says of the backbone evaluated (a Representation's info) and its input."""
  return dict(hub_module=info.get("source"), task=info.get("task"),
              architecture=info.get("architecture"), filters_factor=info.get("filters_factor"),
              **{name: info.get(name) for name in architectures.MODEL_SETTINGS},
              eval_preprocessing=eval_spec)


def _train_on_the_fly(config: LinearEvalConfig, data: EvalData,
                      extractor: features_lib.FeatureExtractor, num_classes: int):
  """Heads trained on features computed inside each step from augmented training batches."""
  num_train = datasets.get_num_examples(config.dataset, config.train_split, config.data_dir)
  stats = None
  if config.standardize_features:
    # One pass over the training split with the evaluation preprocessing, as in the cached path.
    acc = stats_lib.StatsAccumulator(probing.decorrelate(config))
    for images, _ in _one_pass(data, config.train_split):
      acc.update({k: v.numpy() for k, v in extractor(images).items()})
    stats = acc.result()
  else:
    images, _ = next(_one_pass(data, config.train_split))
    extractor(images)  # Builds the extractor: its feature_dims.
  dims = dict(extractor.feature_dims)
  steps_in_epoch = heads_lib.steps_per_epoch(num_train, config.batch_size)
  setting = probing.settings_of(config)[0]
  probes = heads_lib.Probes(
      dims, num_classes, {name: [setting] for name in dims}, config.eval_model,
      config.channels_hidden, config.random_seed, stats,
      lr_factor=probing.schedule(config, steps_in_epoch),
      lr_scale=schedules.scaled_lr(1.0, config.batch_size, config.lr_scale_batch_size))
  heads_lib.train_probes(
      probes, _chunks(_repeat(lambda: data.batches(config.train_split, is_training=True))),
      heads_lib.num_train_steps(config.epochs, steps_in_epoch), feature_fn=extractor)
  metrics = heads_lib.evaluate_probes(probes, _chunks(_one_pass(data, config.val_split)),
                                      feature_fn=extractor)
  return {name: dict(m[0], setting=setting.to_dict()) for name, m in metrics.items()}, \
      num_train, dims


def _chunks(batches):
  """Batches as chunks of one step (heads.train_probes, heads.evaluate_probes)."""
  for images, labels in batches:
    yield tf.expand_dims(images, 0), datasets.image_labels(labels)[None]


def _one_pass(data: EvalData, split: str):
  for batch in data.batches(split, is_training=False):
    yield batch["image"], batch["label"]
