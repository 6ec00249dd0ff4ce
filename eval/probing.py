"""The cached protocol's per-layer probes on feature stores: tuned in one pass, within a budget.

For every layer a bank of heads, one per setting of the grid `probe_lrs` x `probe_weight_decays`
(eval/heads.py), trains on the same batches of the training rows less a held-out minival (a
seeded `MINIVAL_FRACTION` of them, at most `MINIVAL_MAX`, as the 2019 paper held out part of
ImageNet's training set); each layer keeps the setting with the best minival top-1 (the first in
grid order on ties), and that head, as trained, is the one tested on the test split. It is not
trained again on the minival's rows: that would double the heads' time for a tenth more rows (at
ImageNet's size, 50,000 more of 1.28 million). With a grid of one setting there is no minival and
that head is trained on all the rows: to train a chosen setting on every row, give it alone.

Memory: the heads of the layers that fit the budget together train as a group
(`heads.plan_reading`), each group reading its rows from the store (eval/store.py); the batches
are the same whatever the grouping, so the results do not depend on the budget.
"""

import time
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from eval import feature_stats as stats_lib
from eval import heads as heads_lib
from eval import store as store_lib
from training import schedules

MINIVAL_FRACTION = 0.1
MINIVAL_MAX = 50_000
# Rows per read of the streamed passes (statistics); bounded by the budget too.
STATS_BLOCK_ROWS = 4096


def settings_of(config) -> List[heads_lib.Setting]:
  """The grid of head settings a linear evaluation config asks for."""
  return heads_lib.grid(config.probe_lrs, config.probe_weight_decays)


def reading(config, dims: Mapping[str, int], itemsize: int, num_classes: int,
            budget: Optional[int], settings: Optional[int] = None) -> heads_lib.Reading:
  """How the heads of `dims`' layers train within `budget` (see heads.plan_reading)."""
  return heads_lib.plan_reading(dims, itemsize, num_classes, config.eval_model,
                                config.channels_hidden,
                                settings or len(settings_of(config)), config.batch_size, budget,
                                decorrelate(config))


def decorrelate(config) -> bool:
  """Whether the heads take decorrelated features (eval/feature_stats.py): with standardisation."""
  return config.standardize_features and config.probe_decorrelate


def schedule(config, steps_in_epoch: int):
  """The factor of every head's learning rate at a step: warm-up and decays of the config."""
  return schedules.WarmupPiecewiseDecay(
      1.0, steps_in_epoch, config.warmup_epochs, config.decay_epochs, config.lr_decay_factor,
      cosine_epochs=config.epochs if config.lr_schedule == "cosine" else None)


def fit_and_test(config, train: store_lib.Store, rows: np.ndarray,
                 tests: Mapping[str, Tuple[store_lib.Store, np.ndarray]],
                 settings: Mapping[str, Sequence[heads_lib.Setting]], num_classes: int,
                 budget: Optional[int], what: str,
                 times: Optional[MutableMapping[str, float]] = None
                 ) -> Dict[str, Dict[str, List[Dict[str, float]]]]:
  """Heads with `settings[layer]` trained on `rows` of `train`, then tested on each of `tests`
  (name: (store, rows)): per test, layer and setting, top1, top5 and loss. `times` (optional)
  gets `input_stats_s`: the seconds of the inputs' statistics, decorrelation and transform."""
  dims = {name: train.dims[name] for name in settings}
  width = max(len(s) for s in settings.values())
  plan = reading(config, dims, train.dtype.itemsize, num_classes, budget, width)
  order = {name: i for i, name in enumerate(train.layers)}
  steps_in_epoch = heads_lib.steps_per_epoch(len(rows), config.batch_size)
  num_steps = heads_lib.num_train_steps(config.epochs, steps_in_epoch)
  lr_scale = schedules.scaled_lr(1.0, config.batch_size, config.lr_scale_batch_size)
  block = STATS_BLOCK_ROWS
  if budget is not None:
    block = max(1, min(block, budget // max(1, 8 * max(dims.values()) * 3)))
  metrics = {name: {} for name in tests}
  for i, group in enumerate(plan.groups):
    if len(plan.groups) > 1:
      logging.info("%s: layers %s (group %d of %d within the memory budget)", what, group, i + 1,
                   len(plan.groups))
    start = time.time()
    stats = (stats_lib.store_stats(train, group, rows, block, decorrelate(config))
             if config.standardize_features else None)
    group_train, group_rows, group_tests = train, rows, dict(tests)
    if stats is not None and _transform_first(train, rows, tests, stats, budget,
                                              plan.need_bytes):
      # Transformed once here rather than in every step (a product by a D x D basis per batch
      # costs far more than small heads): the same numbers, the same batches.
      group_train = _transformed(train, rows, stats, block)
      group_rows = np.arange(len(rows))
      group_tests = {name: (_transformed(store, test_rows, stats, block),
                            np.arange(len(test_rows)))
                     for name, (store, test_rows) in tests.items()}
      stats = {name: s.applied() for name, s in stats.items()}
    if times is not None:
      times["input_stats_s"] = times.get("input_stats_s", 0.0) + time.time() - start
    probes = heads_lib.Probes(
        {n: dims[n] for n in group}, num_classes, settings, config.eval_model,
        config.channels_hidden, config.random_seed, stats,
        lr_factor=schedule(config, steps_in_epoch), lr_scale=lr_scale, layer_seeds=order)
    heads_lib.train_probes(
        probes, heads_lib.train_chunks(group_train, group, group_rows, config.batch_size,
                                       config.random_seed, plan.steps_per_call, num_steps),
        num_steps, description=what)
    for name, (store, test_rows) in group_tests.items():
      metrics[name].update(heads_lib.evaluate_probes(probes, heads_lib.eval_chunks(
          store, group, test_rows, config.eval_batch_size or config.batch_size)))
  return metrics


def _transform_first(train: store_lib.Store, rows: np.ndarray,
                     tests: Mapping[str, Tuple[store_lib.Store, np.ndarray]],
                     stats: Mapping[str, stats_lib.FeatureStats], budget: Optional[int],
                     heads_bytes: int) -> bool:
  """Whether a decorrelated group's rows are transformed before training: when the stores are in
  memory and the transformed rows (float32) fit beside the heads in `budget`, the memory left
  beside the stores (as linear_eval passes it). Otherwise each batch is transformed in the step,
  as it is read."""
  stores = [train] + [store for store, _ in tests.values()]
  if any(s.basis is None for s in stats.values()) or not all(
      isinstance(s, store_lib.MemoryStore) for s in stores):
    return False
  if budget is None:
    return True
  width = sum(s.basis.shape[1] for s in stats.values())
  transformed = len(rows) + sum(len(test_rows) for _, test_rows in tests.values())
  return heads_bytes + 4 * width * transformed <= budget


def _transformed(store: store_lib.Store, rows: np.ndarray,
                 stats: Mapping[str, stats_lib.FeatureStats], block: int) -> store_lib.MemoryStore:
  """`rows` of the store's layers of `stats`, transformed by them, in memory (float32)."""
  out = {}
  for name, s in stats.items():
    out[name] = np.empty([len(rows), s.input_dim(store.dims[name])], np.float32)
    for i in range(0, len(rows), block):
      x = store.read(name, store_lib.as_rows(rows[i:i + block]))
      out[name][i:i + block] = stats_lib.transform(s, x).numpy()
  return store_lib.MemoryStore(out, store.labels[rows])


def probe(config, train: store_lib.Store, test: store_lib.Store, rows: np.ndarray,
          num_classes: int, budget: Optional[int],
          times: Optional[MutableMapping[str, float]] = None) -> Dict[str, Dict[str, Any]]:
  """Per layer: the chosen head's test top1, top5 and loss, its `setting`, and `minival`: every
  setting's held-out top-1 (absent with a grid of one). `times`: as fit_and_test's."""
  grid = settings_of(config)
  tests = {"test": (test, np.arange(test.num_examples))}
  fit = rows
  if len(grid) > 1:
    fit, minival = heads_lib.minival_split(rows, MINIVAL_FRACTION, MINIVAL_MAX,
                                           config.random_seed)
    tests["minival"] = (train, minival)
    logging.info("heads: %d settings per layer, chosen on a minival of %d of the %d training "
                 "examples", len(grid), len(minival), len(rows))
  scores = fit_and_test(config, train, fit, tests, {n: grid for n in train.layers}, num_classes,
                        budget, "heads", times)
  out = {}
  for name in train.layers:
    choice, held_out = 0, {}
    if "minival" in scores:
      top1 = [s["top1"] for s in scores["minival"][name]]
      choice = int(np.argmax(top1))
      held_out["minival"] = [dict(s.to_dict(), top1=t) for s, t in zip(grid, top1)]
    out[name] = dict(scores["test"][name][choice], setting=grid[choice].to_dict(), **held_out)
  logging.info("heads: settings chosen: %s", {n: out[n]["setting"] for n in train.layers})
  return out
