"""results.json of an evaluation: building, atomic writing, reading, a plain-text table.

Schema (format_version 1):
  {
    "format_version": 1,
    "evaluation": "linear_eval" | "fine_tune",
    "config": {...},                   every field of the evaluation's config
    "source": {"hub_module": <export path> | "random_init", "task", "architecture",
               "filters_factor", the model settings of core/architectures.py (MODEL_SETTINGS:
               "mode", "last_relu", "vit_patch_size", "vit_position_embedding"),
               "eval_preprocessing": the spec the features came from,
               "fingerprint": the backbone's (core/files.export_fingerprint of the export, or
               eval/representation.random_init_fingerprint): the results are reused only for
               the same one},
    "dataset": {"name", "train_split", "val_split", "num_classes",
                "num_train_examples",  examples the heads were trained on
                "num_val_examples"},
    "low_label": null | {"train_fraction", "examples_per_class", "seed", "num_train_examples"},
    "layer_order": [layer names, by depth]; fine_tune: [pre_logits], the layer its head sits on,
    "layers": {layer: {"dim": int, "top1": float, "top5": float, "loss": float,
                       "setting": {"lr", "weight_decay"} of the head reported (linear_eval;
                                  chosen on the minival when the grid has more than one),
                       "minival": [{"lr", "weight_decay", "top1"}: every setting's top-1 on the
                                   held-out part of the training split] (only with a grid),
                       "knn_top1": float (only when kNN was asked for)}},
    "best_layer": {"name": layer with the highest top1 (the shallower one on ties), "top1": float},
    "times": {"feature_extraction_s", "head_training_s", "input_stats_s" (the part of
              head_training_s that made the heads' inputs: statistics, decorrelation, transform;
              the cached protocol), "knn_s", "total_s"}
             (fine_tune: {"training_s", "test_s", "total_s"}),
    "run": how the number was made: commit, command, versions, devices, strategy, seed
           (training/run_record.py; files written before it was recorded have none)
  }
Files written before "evaluation" was recorded are linear_eval's.
Accuracies are fractions in [0, 1]; loss is the mean cross-entropy on the val split; a figure
that is not finite (a diverged head) is written as null, so the file is strict JSON.
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from absl import logging

from core import architectures
from core import files
from core import options
from core.files import RESULTS_FILE

FORMAT_VERSION = 1


def build_results(config: Mapping[str, Any], source: Mapping[str, Any],
                  dataset: Mapping[str, Any], layer_order: Sequence[str],
                  layers: Mapping[str, Mapping[str, float]], times: Mapping[str, float],
                  low_label: Optional[Mapping[str, Any]] = None,
                  evaluation: str = "linear_eval",
                  run: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """The results dict (module docstring); `layers[name]`: dim, top1, top5, loss[, knn_top1]."""
  missing = [name for name in layer_order if name not in layers]
  if missing:
    raise ValueError(f"no results for layers {missing}")
  per_layer = {}
  for name in layer_order:
    entry = dict(layers[name])
    for key in ("dim", "top1", "top5", "loss"):
      if key not in entry:
        raise ValueError(f"results of layer {name!r} lack {key!r}; they have {sorted(entry)}")
    entry["dim"] = int(entry["dim"])
    for key, value in entry.items():
      if key not in ("dim", "setting", "minival"):
        entry[key] = float(value) if value is not None and math.isfinite(value) else None
        if entry[key] is None:
          logging.warning("layer %s: %s is %s (diverged?); written as null", name, key, value)
    per_layer[name] = entry
  order = list(layer_order)
  best = max(order, key=lambda n: (_or_minus_inf(per_layer[n]["top1"]), -order.index(n)))
  return {
      "format_version": FORMAT_VERSION,
      "evaluation": evaluation,
      "config": _jsonable(dict(config)),
      "source": {key: source.get(key) for key in
                 ("hub_module", "task", "architecture", "filters_factor",
                  *architectures.MODEL_SETTINGS, "eval_preprocessing", "fingerprint")},
      "dataset": dict(dataset),
      "low_label": dict(low_label) if low_label else None,
      "layer_order": list(layer_order),
      "layers": per_layer,
      "best_layer": {"name": best, "top1": per_layer[best]["top1"]},
      "times": {key: float(value) for key, value in times.items()},
      "run": dict(run) if run else None,
  }


def write_results(workdir: str, results: Mapping[str, Any]) -> str:
  """Writes `workdir/results.json` atomically (a previous one is replaced only when complete)."""
  return files.write_json_atomic(os.path.join(workdir, RESULTS_FILE), results, allow_nan=False)


def read_results(workdir: str) -> Optional[Dict[str, Any]]:
  """The results in `workdir`, or None when there are none (or they are unreadable)."""
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    logging.warning("ignoring unreadable %s: %s", path, e)
    return None


def comparable_config(config: Any) -> Dict[str, Any]:
  """The config as JSON data, without the settings that do not change results
  (core/options.py)."""
  if dataclasses.is_dataclass(config):
    config = dataclasses.asdict(config)
  data = _jsonable(dict(config))
  return {key: value for key, value in data.items() if key not in options.NON_RESULT}


def results_exist(workdir: str, config: Any, fingerprint: Optional[str]) -> bool:
  """Whether `workdir` holds complete results of an evaluation with the same config, of the
  backbone with this fingerprint (`source.fingerprint`)."""
  results = read_results(workdir)
  if not results or "layers" not in results or "config" not in results:
    return False
  return (fingerprint is not None and (results.get("source") or {}).get("fingerprint") ==
          fingerprint and comparable_config(results["config"]) == comparable_config(config))


def skip_or_set_aside(workdir: str, config: Any, fingerprint: Optional[str],
                      print_fn: Callable[[str], None]) -> Optional[Dict[str, Any]]:
  """Before an evaluation: its results where `workdir` holds those of the same config and
  backbone (and `config.force` is off), to be reused; else None, a results.json of another
  config or backbone having been moved to <workdir>/replaced/<time>/ (never overwritten)."""
  if not config.force and results_exist(workdir, config, fingerprint):
    print_fn(f"results of this config and backbone exist in {workdir}; reusing them (--force "
             "re-runs)")
    return read_results(workdir)
  previous = read_results(workdir)
  if previous is not None and not (
      (previous.get("source") or {}).get("fingerprint") == fingerprint and
      comparable_config(previous.get("config") or {}) == comparable_config(config)):
    moved = files.move_aside(workdir, [RESULTS_FILE])
    print_fn(f"{workdir} held results of another config or backbone: moved to {moved}")
  return None


def format_table(results: Mapping[str, Any]) -> str:
  """A plain-text table: layer, dim, top1, top5, loss (and knn when present), in depth order."""
  order = results["layer_order"]
  with_knn = any("knn_top1" in results["layers"][n] for n in order)
  header = ["layer", "dim", "top1", "top5", "loss"] + (["knn"] if with_knn else [])
  rows = []
  for name in order:
    r = results["layers"][name]
    row = [name, str(r["dim"]), _pct(r["top1"]), _pct(r["top5"]), _loss(r["loss"])]
    if with_knn:
      row.append(_pct(r["knn_top1"]) if "knn_top1" in r else "-")
    rows.append(row)
  widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(line, widths)))
           for line in [header] + rows]
  best = results.get("best_layer")
  if best:
    lines.append(f"best layer: {best['name']} (top1 {_pct(best['top1'])})")
  return "\n".join(lines)


def _or_minus_inf(value: Optional[float]) -> float:
  return -math.inf if value is None else value


def _pct(value: Optional[float]) -> str:
  return "nan" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _loss(value: Optional[float]) -> str:
  return "nan" if value is None or math.isnan(value) else f"{value:.4f}"


def _jsonable(value: Any) -> Any:
  """JSON round trip: tuples become lists, so configs compare equal to ones read back."""
  return json.loads(json.dumps(value, default=str))
