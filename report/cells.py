"""The cells of one or several grid roots, read from their result files alone.

The grid runner (grid/) leaves <root>/<cell>/cell.json (the cell's name, kind, settings and step
times), pretext_results.json (the pretext accuracy) and <root>/<cell>/<evaluation>/results.json
(eval/results.py) per evaluation; <root>/grid_status.json records the failures. A results.json
elsewhere under a root (a run outside the grid) is a cell of its own, described by what
results.json says. Results of the same cell and evaluation in several roots: the most recent one
is kept.
"""

import dataclasses
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import files
from core import specs
from core.files import (CELL_FILE, PRETEXT_RESULTS_FILE, RESULTS_FILE, SERIES_FILE,
                        STATUS_FILE)
from core.options import RANDOM_INIT


# Folders of a cell that hold no results of its own.
SKIPPED_DIRS = ("report", files.REPLACED_DIR) + files.RUN_DIRS
KIND_ORDER = {"pretext": 0, "supervised": 1, RANDOM_INIT: 2}
FINE_TUNED = "fine_tune"  # results.json's "evaluation" of eval/fine_tune.py.
LINEAR_EVAL = "linear_eval"  # Of the probes; also a grid's default evaluation's name.
KIND_LABELS = {"pretext": "", "supervised": "reference", RANDOM_INIT: "baseline"}


@dataclasses.dataclass
class CellResult:
  """One evaluated cell: its identity and its result files' contents."""
  name: str
  root: str
  evaluation_name: str           # the evaluation's directory name in the cell (or "")
  kind: str                      # pretext, supervised, random_init
  method: str
  architecture: str
  mode: Optional[str]
  width: Optional[int]
  results: Dict[str, Any]
  pretext: Optional[Dict[str, Any]] = None
  state: Optional[Dict[str, Any]] = None      # cell.json
  wall_s: Optional[float] = None
  mtime: float = 0.0
  directory: str = ""            # the folder of its results.json

  @property
  def family(self) -> str:
    return architectures.family(self.architecture)

  @property
  def evaluation(self) -> Tuple[str, ...]:
    # A probe run outside a grid (results.json in its own workdir) is a grid's default
    # evaluation, linear_eval: its table is the grid cells' of the same protocol.
    name = self.evaluation_name or (LINEAR_EVAL if self.results.get("evaluation") == LINEAR_EVAL
                                    else "")
    return (name,) + evaluation_key(self.results)

  @property
  def pretext_accuracy(self) -> Optional[float]:
    metrics = (self.pretext or {}).get("metrics") or {}
    value = metrics.get("accuracy")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

  @property
  def pretext_metric(self) -> Optional[Tuple[str, float]]:
    """(name, value) of the metric the method names as its own (pretext_results.json's
    `pretext_metric`; accuracy where it names none, as results written before it did)."""
    name = (self.pretext or {}).get("pretext_metric") or "accuracy"
    value = ((self.pretext or {}).get("metrics") or {}).get(name)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
      return None
    return str(name), float(value)

  @property
  def best_layer(self) -> Optional[str]:
    best = self.results.get("best_layer") or {}
    if best.get("name"):
      return best["name"]
    scored = [(v.get("top1"), -i, n) for i, (n, v) in enumerate(self._layers())
              if v.get("top1") is not None]
    return max(scored)[2] if scored else None

  def _layers(self):
    layers = self.results.get("layers") or {}
    return [(n, layers[n]) for n in self.results.get("layer_order") or layers if n in layers]

  def top1(self, layer: str) -> Optional[float]:
    return ((self.results.get("layers") or {}).get(layer) or {}).get("top1")

  @property
  def on_patches(self) -> bool:
    """Whether the features came from patches (`crop_patches` in the evaluation spec; results
    written before the spec was recorded: in the pretext training spec of cell.json)."""
    spec = ((self.results.get("source") or {}).get("eval_preprocessing")
            or (self.results.get("config") or {}).get("eval_preprocessing")
            or ((self.state or {}).get("pretext_flags") or {}).get("preprocessing") or "")
    return specs.makes_patches(str(spec))

  @property
  def eval_spec(self) -> str:
    """The preprocessing spec its features came from ('' where not recorded)."""
    return str((self.results.get("source") or {}).get("eval_preprocessing")
               or (self.results.get("config") or {}).get("eval_preprocessing") or "")

  @property
  def deterministic_input(self) -> bool:
    """Whether its images all went through the deterministic preprocessing (the cached probes;
    not the on-the-fly ones, nor fine-tuning)."""
    return evaluation_key(self.results)[4] == "cached"

  def arch_label(self) -> str:
    return f"{self.architecture} {self.mode}" if self.mode else self.architecture


def evaluation_key(results: Mapping[str, Any]) -> Tuple[str, ...]:
  """What makes two results comparable: dataset and splits, head (or fine-tuning), protocol,
  low-label subset."""
  data = results.get("dataset") or {}
  config = results.get("config") or {}
  low = results.get("low_label") or {}
  fine_tuned = results.get("evaluation") == FINE_TUNED
  return (str(data.get("name")), str(data.get("train_split")), str(data.get("val_split")),
          FINE_TUNED if fine_tuned else str(config.get("eval_model", "linear")),
          "" if fine_tuned else "on_the_fly" if config.get("on_the_fly") else "cached",
          f"fraction={low['train_fraction']}" if low.get("train_fraction") else
          f"per_class={low['examples_per_class']}" if low.get("examples_per_class") else "")


def evaluation_title(key: Sequence[str]) -> str:
  """A heading for (evaluation name, *evaluation_key(results))."""
  name, dataset, train, val, model, protocol, low = key
  if model == FINE_TUNED:
    title = (f"{dataset}: the whole backbone fine-tuned with a linear head on pre_logits, "
             f"trained on {train}, tested on {val}")
  else:
    title = f"{dataset}: {model} probes, trained on {train}, tested on {val}"
  if name and name != "linear_eval":
    title = f"{name} ({title})"
  if protocol == "on_the_fly":
    title += ", on-the-fly features"
  if low:
    title += f", low-label ({low})"
  return title


def slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()[:80]


def _cell_from_dir(root: str, directory: str) -> Optional[CellResult]:
  """The cell whose results.json is in `directory` (<cell>/<evaluation>, or a directory alone)."""
  results = files.read_json(os.path.join(directory, RESULTS_FILE))
  if not isinstance(results, dict) or not isinstance(results.get("layers"), dict):
    return None
  cell_dir, evaluation_name = directory, ""
  parent = os.path.dirname(directory)
  if not os.path.exists(os.path.join(directory, CELL_FILE)) and os.path.exists(
      os.path.join(parent, CELL_FILE)):
    cell_dir, evaluation_name = parent, os.path.basename(directory)
  state = files.read_json(os.path.join(cell_dir, CELL_FILE))
  state = state if isinstance(state, dict) else None
  pretext = files.read_json(os.path.join(cell_dir, PRETEXT_RESULTS_FILE))
  source = results.get("source") or {}
  config = results.get("config") or {}
  if state and state.get("name"):
    name, kind, method = state["name"], state.get("kind"), state.get("method")
    arch, mode, width = state.get("architecture"), state.get("mode"), state.get("width")
  else:  # Results of a run outside the grid runner: what results.json says.
    random_init = source.get("hub_module") in (RANDOM_INIT, None) and not config.get(
        "hub_module")
    task = source.get("task") or (RANDOM_INIT if random_init else "unknown")
    kind = RANDOM_INIT if random_init else ("supervised" if task == "supervised" else "pretext")
    method = RANDOM_INIT if random_init else task
    arch = source.get("architecture") or config.get("architecture") or "unknown"
    mode = architectures.variant_label(arch, source.get)
    width = source.get("filters_factor")
    name = os.path.relpath(cell_dir, root)
  return CellResult(name=name, root=root, evaluation_name=evaluation_name,
                    kind=kind or "pretext", method=method or "unknown",
                    architecture=arch or "unknown", mode=mode, width=width, results=results,
                    pretext=pretext if isinstance(pretext, dict) else None, state=state,
                    wall_s=_wall_time(state, evaluation_name, results),
                    mtime=os.path.getmtime(os.path.join(directory, RESULTS_FILE)),
                    directory=directory)


def _wall_time(state: Optional[Mapping[str, Any]], evaluation_name: str,
               results: Mapping[str, Any]) -> Optional[float]:
  """Seconds of the cell's pretext step and of this evaluation (cell.json), else results.json's."""
  steps = (state or {}).get("steps") or {}
  parts = [steps.get(step, {}).get("seconds") for step in ("pretext", f"eval:{evaluation_name}")
           if step in steps]
  if parts and all(isinstance(p, (int, float)) for p in parts) and \
      f"eval:{evaluation_name}" in steps:
    return float(sum(parts))
  if isinstance((state or {}).get("wall_s"), (int, float)):
    return float(state["wall_s"])
  total = (results.get("times") or {}).get("total_s")
  return float(total) if isinstance(total, (int, float)) else None


def find_cell_dirs(root: str, max_depth: int = 4) -> List[str]:
  """Directories under `root` holding a results.json, sorted (the report's own folder skipped)."""
  found = []
  root = os.path.abspath(root)
  for directory, subdirs, names in os.walk(root):
    depth = os.path.relpath(directory, root).count(os.sep) + (directory != root)
    subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS and not d.startswith("."))
    if depth >= max_depth or SERIES_FILE in names:  # A series' per-checkpoint results: not cells.
      subdirs[:] = []
    if RESULTS_FILE in names:
      found.append(directory)
  return sorted(found)


def load_cells(roots: Sequence[str]) -> Tuple[List[CellResult], List[str]]:
  """The evaluated cells of all roots (one per name: the most recent), and notes on duplicates."""
  by_name: Dict[Tuple[str, str], CellResult] = {}
  notes = []
  for root in roots:
    if not os.path.isdir(root):
      raise FileNotFoundError(f"grid root {root} does not exist")
    for directory in find_cell_dirs(root):
      cell = _cell_from_dir(os.path.abspath(root), directory)
      if cell is None:
        continue
      key = (cell.name, cell.evaluation_name)
      other = by_name.get(key)
      if other is not None:
        keep, drop = (cell, other) if cell.mtime >= other.mtime else (other, cell)
        label = cell.name + (f" ({cell.evaluation_name})" if cell.evaluation_name else "")
        notes.append(f"{label}: results in {keep.root} (newer) used, {drop.root} ignored")
        cell = keep
      by_name[key] = cell
  return sort_cells(by_name.values()), notes


def load_failures(roots: Sequence[str], evaluated: Sequence[str] = ()) -> List[Dict[str, Any]]:
  """Failed (or interrupted) cells of the roots' grid_status.json, except those evaluated."""
  failures = {}
  for root in roots:
    status = files.read_json(os.path.join(root, STATUS_FILE)) or {}
    for name, entry in (status.get("cells") or {}).items():
      if entry.get("status") in ("failed", "interrupted") and name not in evaluated:
        failures[name] = dict(entry, name=name, root=os.path.abspath(root))
  return [failures[n] for n in sorted(failures)]


def sort_cells(cells) -> List[CellResult]:
  return sorted(cells, key=lambda c: (KIND_ORDER.get(c.kind, 3), c.method, c.architecture,
                                      c.mode or "", c.width if c.width is not None else 0,
                                      c.name))
