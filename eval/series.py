"""Probes over training: the per-layer evaluation of every checkpoint that a pretext run kept.

  train_and_eval.py --flagfile=configs/rotation/shapes.flags --eval_every_epochs=0.25 \
      --workdir=workdirs/rot
  train_and_eval.py --flagfile=configs/evaluation/shapes.flags --task=probe_series \
      --hub_module=workdirs/rot --workdir=workdirs/rot/probe_series

The pretext run exports each kept checkpoint to <pretext workdir>/exports/step_<N> (with its
step, epoch and pretext metrics). This evaluation probes each of them as --task=linear_eval does
(the cached protocol: features per checkpoint), into <workdir>/step_<N>/results.json, a
checkpoint whose results of that very export are there being skipped (an interrupted series
resumes), then writes <workdir>/series.json:

  {"format_version": 1, "evaluation": "probe_series", "source": {"hub_module": the pretext
   workdir | "random_init", "task", "architecture", "filters_factor", "mode"},
   "layer_order": [...],
   "points": [{"step", "epoch", "pretext_accuracy" (null without --run_eval),
               "top1": {layer: top-1}, "best_layer": {"name", "top1"}}, ...by step],
   "run": the run record (training/run_record.py)}

and <workdir>/results.json: the last checkpoint's results (eval/results.py) with "evaluation":
"probe_series" and the series' own times ({"probes_s": the probes of every checkpoint, "total_s":
this run}), so that the grid and the report treat the series as one evaluation of the cell.
The random-init baseline is a series of one point, step 0.
"""

import dataclasses
import os
import time
from typing import Any, Dict, List, Mapping, Tuple

from absl import logging

from core import files
from core.errors import ConfigError
from eval import linear_eval
from eval import results as results_lib
from training import run_record

FORMAT_VERSION = 1
EVALUATION = "probe_series"


def pretext_workdir_of(hub_module: str) -> str:
  """The pretext workdir that `hub_module` names (the workdir, or its export/)."""
  path = hub_module.rstrip("/")
  if os.path.basename(path) == files.EXPORT_DIR and not os.path.isdir(
      os.path.join(path, files.SERIES_EXPORTS_DIR)):
    return os.path.dirname(path)
  return path


def series_exports(hub_module: str) -> List[Tuple[int, str]]:
  """(step, export dir) of every checkpoint export of the pretext run, by step."""
  workdir = pretext_workdir_of(hub_module)
  root = os.path.join(workdir, files.SERIES_EXPORTS_DIR)
  found = []
  if os.path.isdir(root):
    for name in sorted(os.listdir(root)):
      path = os.path.join(root, name)
      info = files.read_export_info(path, missing_ok=True)
      if name.startswith("step_") and isinstance(info.get("step"), int) and os.path.exists(
          os.path.join(path, "saved_model.pb")):
        found.append((info["step"], path))
  if not found:
    raise ConfigError(
        f"--hub_module={hub_module}: the pretext run in {workdir} kept no checkpoints to probe "
        f"(no {files.SERIES_EXPORTS_DIR}/step_<N> exports); train it with --eval_every_epochs "
        "(or --eval_at_steps), in a new workdir or from the start")
  return sorted(found)


def _point_done(point_dir: str, config) -> bool:
  """Results of the same config, of the export (its fingerprint) that the point probes."""
  return results_lib.results_exist(point_dir, config, linear_eval.source_fingerprint(config))


def run_probe_series(config, print_fn=logging.info) -> Dict[str, Any]:
  """Probes every kept checkpoint; writes series.json and results.json, returns the results."""
  start = time.time()
  linear_eval.validate_config(config)
  if config.on_the_fly:
    raise ConfigError("--task=probe_series uses the cached protocol; drop --on_the_fly")
  points = ([(0, None)] if config.hub_module is None else
            series_exports(config.hub_module))
  series, last, probes_s = [], None, 0.0
  for i, (step, export_dir) in enumerate(points):
    point_dir = os.path.join(config.workdir, files.step_dir_name(step))
    point_config = dataclasses.replace(config, workdir=point_dir, force=False,
                                       hub_module=export_dir or config.hub_module)
    if _point_done(point_dir, point_config):
      results = results_lib.read_results(point_dir)
      print_fn(f"step {step} ({i + 1}/{len(points)}): probed earlier")
    else:
      results = linear_eval.run_linear_eval(dataclasses.replace(point_config, force=True))
      print_fn(f"step {step} ({i + 1}/{len(points)}): best layer "
               f"{results['best_layer']['name']} {100 * results['best_layer']['top1']:.1f}%")
    info = files.read_export_info(export_dir, missing_ok=True) if export_dir else {}
    metrics = info.get("pretext_metrics") or {}
    series.append(dict(
        step=step, epoch=info.get("epoch", 0.0), pretext_accuracy=metrics.get("accuracy"),
        top1={name: results["layers"][name]["top1"] for name in results["layer_order"]},
        best_layer=results["best_layer"]))
    last = results
    probes_s += float((results.get("times") or {}).get("total_s") or 0.0)
  source = dict(last["source"], hub_module=(
      pretext_workdir_of(config.hub_module) if config.hub_module else last["source"].get(
          "hub_module")))
  run = run_record.record(config.random_seed, deterministic=config.deterministic)
  files.write_json_atomic(os.path.join(config.workdir, files.SERIES_FILE), dict(
      format_version=FORMAT_VERSION, evaluation=EVALUATION, source=source,
      layer_order=last["layer_order"], points=series, run=run), allow_nan=False)
  # The series' own times: its probes (those done now and earlier), and this run's wall time.
  results = dict(last, evaluation=EVALUATION, config=results_lib.comparable_config(config) | {
      "workdir": config.workdir}, run=run,
      times=dict(probes_s=probes_s, total_s=time.time() - start))
  results_lib.write_results(config.workdir, results)
  print_fn(format_series(series, last["layer_order"]))
  return results


def format_series(points: List[Mapping[str, Any]], layers: List[str]) -> str:
  """The series as text: a row per checkpoint, the pretext accuracy and each layer's top-1."""
  header = ["step", "epoch", "pretext"] + list(layers)
  rows = [[str(p["step"]), f"{p['epoch']:.2f}",
           "-" if p["pretext_accuracy"] is None else f"{100 * p['pretext_accuracy']:.1f}"] +
          ["-" if p["top1"].get(n) is None else f"{100 * p['top1'][n]:.1f}" for n in layers]
          for p in points]
  widths = [max(len(x) for x in col) for col in zip(header, *rows)]
  return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths))
                   for line in [header] + rows)
