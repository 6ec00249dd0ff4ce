"""Layer similarity: linear CKA between every end point of two backbones, on one fixed image set.

  train_and_eval.py --task=cka --hub_module=<export A> --cka_other=<export B | random_init | ''>
      --dataset=shapes --val_split='test[:2048]' --eval_batch_size=256 --workdir=<dir>

Linear CKA (Kornblith et al. 2019) of two representations X [n, p] and Y [n, q] of the same n
images compares their Gram matrices K = X X^T and L = Y Y^T:
  CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).
It is estimated in minibatches (Nguyen, Raghu, Kornblith 2021): the images are split into batches
of the same size, HSIC is estimated on each with the unbiased estimator of Song et al. (2012), and
the three HSIC terms are averaged over batches before the ratio, so no more than one batch of
features is ever held. Both backbones see the same images in the same order, each with its own
evaluation preprocessing; their end points are pooled as for the probes (eval/pooling.py).

Writes <workdir>/cka.json:
  {"format_version": 1, "evaluation": "cka", "config": {...},
   "a": {"hub_module", "task", "architecture", "filters_factor", "mode", "eval_preprocessing",
         "step"}, "b": {... the same},
   "layers_a": [...], "layers_b": [...], "matrix": [[CKA of layers_a[i], layers_b[j]]],
   "dataset": {"name", "split", "num_examples"}, "batch_size": examples per minibatch,
   "num_batches": int, "num_examples": images compared, "fingerprints": what identified the
   two backbones' weights (core/files.export_fingerprint, or random init's: other weights
   recompute),
   "times": {"total_s"}, "run": the run record (training/run_record.py)}
"""

import dataclasses
import os
import time
from typing import Any, Dict, Iterable, Mapping, Sequence, Tuple

from absl import logging
import numpy as np

from core import files
from core import options
from core.errors import ConfigError
from core.files import CKA_FILE
from core.options import require
import datasets
from eval import features as features_lib
from eval import linear_eval
from eval import representation as representation_lib
from eval import results as results_lib
from training import run_record
from training import validation

FORMAT_VERSION = 1
MIN_BATCH = 4  # The unbiased HSIC estimator needs n > 3.


def centred_gram(features: np.ndarray) -> np.ndarray:
  """The linear Gram matrix X X^T (float64) with its diagonal set to zero, as the unbiased
  estimator uses it."""
  x = np.asarray(features, np.float64).reshape(len(features), -1)
  gram = x @ x.T
  np.fill_diagonal(gram, 0.0)
  return gram


def hsic_terms(grams_a: Sequence[np.ndarray], grams_b: Sequence[np.ndarray]) -> np.ndarray:
  """Unbiased HSIC (Song et al. 2012) of every pair (grams_a[i], grams_b[j]): [len_a, len_b].

  HSIC_1(K, L) = [tr(K L) + 1'K1 1'L1 / ((n-1)(n-2)) - 2/(n-2) 1'K L1] / (n(n-3)),
  K and L with zero diagonals (centred_gram).
  """
  n = grams_a[0].shape[0]
  if n < MIN_BATCH:
    raise ValueError(f"the unbiased HSIC estimator needs at least {MIN_BATCH} examples, got {n}")
  flat_a = np.stack([g.reshape(-1) for g in grams_a])
  flat_b = np.stack([g.reshape(-1) for g in grams_b])
  trace = flat_a @ flat_b.T                                  # tr(K L) = sum(K * L), K symmetric.
  rows_a = np.stack([g.sum(axis=1) for g in grams_a])        # K 1
  rows_b = np.stack([g.sum(axis=1) for g in grams_b])
  totals = np.outer(rows_a.sum(axis=1), rows_b.sum(axis=1))  # 1'K1 1'L1
  cross = rows_a @ rows_b.T                                  # 1'K L 1
  return (trace + totals / ((n - 1) * (n - 2)) - 2.0 * cross / (n - 2)) / (n * (n - 3))


class MinibatchCKA:
  """Sums of the HSIC terms over minibatches of two representations' features; `result()` is the
  CKA matrix [layers_a, layers_b]."""

  def __init__(self, layers_a: Sequence[str], layers_b: Sequence[str]):
    self.layers_a, self.layers_b = list(layers_a), list(layers_b)
    self.cross = np.zeros([len(layers_a), len(layers_b)])
    self.self_a = np.zeros([len(layers_a)])
    self.self_b = np.zeros([len(layers_b)])
    self.num_batches = 0
    self.num_examples = 0

  def update(self, features_a: Mapping[str, np.ndarray], features_b: Mapping[str, np.ndarray]):
    grams_a = [centred_gram(features_a[name]) for name in self.layers_a]
    grams_b = [centred_gram(features_b[name]) for name in self.layers_b]
    self.cross += hsic_terms(grams_a, grams_b)
    self.self_a += np.array([hsic_terms([g], [g])[0, 0] for g in grams_a])
    self.self_b += np.array([hsic_terms([g], [g])[0, 0] for g in grams_b])
    self.num_batches += 1
    self.num_examples += grams_a[0].shape[0]

  def result(self) -> np.ndarray:
    if not self.num_batches:
      raise ValueError("no minibatches: CKA needs at least one batch of "
                       f">= {MIN_BATCH} examples")
    denominator = np.sqrt(np.outer(np.maximum(self.self_a, 0.0), np.maximum(self.self_b, 0.0)))
    with np.errstate(invalid="ignore", divide="ignore"):
      return np.where(denominator > 0, self.cross / denominator, np.nan)


def cka(features_a: Iterable[Mapping[str, np.ndarray]],
        features_b: Iterable[Mapping[str, np.ndarray]], layers_a: Sequence[str],
        layers_b: Sequence[str]) -> Tuple[np.ndarray, MinibatchCKA]:
  """The minibatch CKA matrix of two aligned streams of per-layer feature batches (batches of
  fewer than MIN_BATCH examples are left out)."""
  acc = MinibatchCKA(layers_a, layers_b)
  for batch_a, batch_b in zip(features_a, features_b):
    if len(next(iter(batch_a.values()))) >= MIN_BATCH:
      acc.update(batch_a, batch_b)
  return acc.result(), acc


# ----------------------------------------------------------------------------- the evaluation
def validate_config(config, check_data: bool = True, export_pending: bool = False) -> None:
  linear_eval.validate_source(config, options.EVAL)
  batch = config.eval_batch_size or config.batch_size
  require(batch >= MIN_BATCH, f"--eval_batch_size={batch}: the unbiased CKA estimator needs "
          f"minibatches of at least {MIN_BATCH} examples (a few hundred is usual)")
  linear_eval.check_sources(config, export_pending, check_data, probe_data=False)
  if config.cka_other == options.RANDOM_INIT and config.hub_module is not None and \
      not export_pending:
    _other_config(config)  # Its random-init twin needs one of the suite's architectures.
  if check_data:
    validation.check_split(config.dataset, config.data_dir, "val_split", config.val_split,
                           at_least=MIN_BATCH, why="the unbiased CKA estimator")


def _other_config(config):
  """The config of backbone B: an export path, random_init (of A's architecture), or A itself."""
  other = config.cka_other
  if not other:
    return config
  if other == options.RANDOM_INIT:
    if config.hub_module is None:
      return config
    info = linear_eval.require_suite_backbone(config.hub_module,
                                              f"--cka_other={other} (its random-init twin)")
    return dataclasses.replace(
        config, hub_module=None, architecture=info["architecture"],
        filters_factor=info.get("filters_factor"), mode=info.get("mode") or "v2",
        last_relu=info.get("last_relu", True),
        eval_preprocessing=config.eval_preprocessing or info.get("eval_preprocessing"),
        preprocess_params=config.preprocess_params or info.get("preprocess_config"))
  return dataclasses.replace(config, hub_module=other)


def _side(config, name: str) -> Tuple[representation_lib.Representation, linear_eval.EvalData,
                                      features_lib.FeatureExtractor]:
  """Backbone `name` (A or B) restricted to config.layers, its data and its feature extractor."""
  try:
    rep = linear_eval.load_representation(dataclasses.replace(config, layers=None))
  except (FileNotFoundError, ValueError) as e:
    raise ConfigError(str(e)) from None
  unknown = [n for n in (config.layers or []) if n not in rep.layers]
  require(not unknown, f"layers: {unknown} are not end points of backbone {name}; it has "
          f"{', '.join(rep.layers)}")
  rep = rep.select(config.layers)
  data = linear_eval.eval_data(config, rep.info)
  linear_eval.check_input(rep, data, config.val_split)
  extractor = features_lib.FeatureExtractor(rep, config.pool_mode, config.combine_patches,
                                            config.max_features, config.token_pooling)
  return rep, data, extractor


def _describe(rep, data) -> Dict[str, Any]:
  return dict(linear_eval.describe_source(rep.info, data.eval_spec), step=rep.info.get("step"))


def _feature_batches(data: linear_eval.EvalData, extractor, split: str):
  for batch in data.batches(split, is_training=False):
    features = extractor(batch["image"])
    yield ({name: value.numpy() for name, value in features.items()},
           datasets.image_labels(np.asarray(batch["label"])))


def run_cka(config, print_fn=logging.info) -> Dict[str, Any]:
  """The CKA matrix between every end point of the two backbones; writes and returns cka.json."""
  start = time.time()
  validate_config(config)
  run_record.make_repeatable(config.random_seed, config.deterministic)
  rep_a, data_a, extractor_a = _side(config, "A")
  rep_b, data_b, extractor_b = _side(_other_config(config), "B")
  fingerprints = [rep_a.fingerprint, rep_b.fingerprint]  # A re-export changes them.
  path = os.path.join(config.workdir, CKA_FILE)
  previous = files.read_json(path)
  if (not config.force and isinstance(previous, dict) and "matrix" in previous and
      previous.get("fingerprints") == fingerprints and
      results_lib.comparable_config(previous.get("config") or {}) ==
      results_lib.comparable_config(config)):
    print_fn(f"CKA for this config exists in {path}; skipped (--force re-runs)")
    return previous
  layers_a, layers_b = list(rep_a.layers), list(rep_b.layers)

  def stream(data, extractor, keep):
    for features, labels in _feature_batches(data, extractor, config.val_split):
      keep.append(labels)
      yield features

  seen_a, seen_b = [], []
  matrix, acc = cka(stream(data_a, extractor_a, seen_a), stream(data_b, extractor_b, seen_b),
                    layers_a, layers_b)
  num = datasets.get_num_examples(config.dataset, config.val_split, config.data_dir)
  counts = [sum(len(labels) for labels in seen) for seen in (seen_a, seen_b)]
  # Both pipelines read the whole split in one order: the same labels, batch by batch.
  if counts != [num, num] or not all(np.array_equal(a, b) for a, b in zip(seen_a, seen_b)):
    raise RuntimeError(f"the two backbones were shown different images ({counts[0]} and "
                       f"{counts[1]} of the {num} of {config.val_split})")
  results = {
      "format_version": FORMAT_VERSION, "evaluation": "cka",
      "config": results_lib.comparable_config(config) | {"workdir": config.workdir},
      "a": _describe(rep_a, data_a), "b": _describe(rep_b, data_b),
      "layers_a": layers_a, "layers_b": layers_b,
      "matrix": [[None if not np.isfinite(v) else round(float(v), 6) for v in row]
                 for row in matrix],
      "dataset": dict(name=config.dataset, split=config.val_split, num_examples=num),
      "batch_size": config.eval_batch_size or config.batch_size,
      "num_batches": acc.num_batches, "num_examples": acc.num_examples,
      "fingerprints": fingerprints,
      "times": {"total_s": time.time() - start},
      "run": run_record.record(config.random_seed, deterministic=config.deterministic),
  }
  files.write_json_atomic(path, results, allow_nan=False)
  print_fn(format_matrix(results))
  return results


def format_matrix(results: Mapping[str, Any]) -> str:
  """The matrix as text: rows backbone A's layers, columns B's."""
  width = max(len(n) for n in results["layers_a"])
  cols = results["layers_b"]
  lines = [f"linear CKA ({results['num_examples']} images of {results['dataset']['split']}, "
           f"{results['num_batches']} minibatches): rows {results['a']['hub_module']}, "
           f"columns {results['b']['hub_module']}",
           " " * width + "  " + "  ".join(c[:10].rjust(10) for c in cols)]
  for name, row in zip(results["layers_a"], results["matrix"]):
    lines.append(name.ljust(width) + "  " + "  ".join(
        ("nan" if v is None else f"{v:.3f}").rjust(10) for v in row))
  return "\n".join(lines)
