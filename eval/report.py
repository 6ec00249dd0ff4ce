"""The report of one or several grid roots, made from the cells' result files alone.

  cells = load_cells(["workdirs/grid_shapes", "/mnt/other_machine/grid_shapes"])
  paths = write_report(cells, "workdirs/grid_shapes/report")
  print(summary_text(cells))

The grid runner (grid/) leaves <root>/<cell>/cell.json (the cell's name, kind, settings
and step times), pretext_results.json (the pretext accuracy) and <root>/<cell>/<evaluation>/
results.json (eval/results.py) per evaluation; <root>/grid_status.json records the failures.
A results.json elsewhere under a root (a run outside the grid) is a cell of its own, described by
what results.json says. Results of the same cell and evaluation in several roots: the most
recent one is kept.

Writes report.md (a table per evaluation and architecture family: rows = cells, columns = layers
in depth order, the best layer in bold), report.csv (one row per cell and layer), report.json
(the same numbers, nested) and one PNG plot of top-1 accuracy against layer depth per table.
"""

import csv
import dataclasses
import datetime
import io
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import files
from core import specs
from grid import flags as grid_flags

STATUS_FILE = "grid_status.json"
CELL_FILE = "cell.json"
RESULTS_FILE = "results.json"
PRETEXT_RESULTS_FILE = "pretext_results.json"
RANDOM_INIT = "random_init"

KIND_ORDER = {"pretext": 0, "supervised": 1, RANDOM_INIT: 2}
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

  @property
  def family(self) -> str:
    return architectures.family(self.architecture)

  @property
  def evaluation(self) -> Tuple[str, ...]:
    return (self.evaluation_name,) + evaluation_key(self.results)

  @property
  def pretext_accuracy(self) -> Optional[float]:
    metrics = (self.pretext or {}).get("metrics") or {}
    value = metrics.get("accuracy")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

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

  def arch_label(self) -> str:
    return f"{self.architecture} {self.mode}" if self.mode else self.architecture


def evaluation_key(results: Mapping[str, Any]) -> Tuple[str, ...]:
  """What makes two results comparable: dataset and splits, head, protocol, low-label subset."""
  data = results.get("dataset") or {}
  config = results.get("config") or {}
  low = results.get("low_label") or {}
  return (str(data.get("name")), str(data.get("train_split")), str(data.get("val_split")),
          str(config.get("eval_model", "linear")),
          "on_the_fly" if config.get("on_the_fly") else "cached",
          f"fraction={low['train_fraction']}" if low.get("train_fraction") else
          f"per_class={low['examples_per_class']}" if low.get("examples_per_class") else "")


def evaluation_title(key: Sequence[str]) -> str:
  """A heading for (evaluation name, *evaluation_key(results))."""
  name, dataset, train, val, model, protocol, low = key
  title = f"{dataset}: {model} probes, trained on {train}, tested on {val}"
  if name and name != "linear_eval":
    title = f"{name} ({title})"
  if protocol == "on_the_fly":
    title += ", on-the-fly features"
  if low:
    title += f", low-label ({low})"
  return title


def _slug(text: str) -> str:
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
    mode = source.get("mode") if architectures.has_modes(arch) else None
    width = source.get("filters_factor")
    name = os.path.relpath(cell_dir, root)
  return CellResult(name=name, root=root, evaluation_name=evaluation_name,
                    kind=kind or "pretext", method=method or "unknown",
                    architecture=arch or "unknown", mode=mode, width=width, results=results,
                    pretext=pretext if isinstance(pretext, dict) else None, state=state,
                    wall_s=_wall_time(state, evaluation_name, results),
                    mtime=os.path.getmtime(os.path.join(directory, RESULTS_FILE)))


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
    subdirs[:] = sorted(d for d in subdirs if d not in ("report", "export", "checkpoints",
                                                          "train") and not d.startswith("."))
    if depth >= max_depth:
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


def layer_columns(cells: Sequence[CellResult]) -> List[str]:
  """The layers of `cells` (one family), by depth: the known order, then others in their order."""
  names: List[str] = []
  for cell in cells:
    for name in cell.results.get("layer_order") or list(cell.results.get("layers") or {}):
      if name not in names:
        # Insert after the layer that precedes it in this cell's order, if any.
        order = cell.results.get("layer_order") or []
        before = [n for n in order[:order.index(name)] if n in names] if name in order else []
        names.insert(names.index(before[-1]) + 1 if before else len(names), name)
  # Layer names by depth, per family (core/architectures.py); other names keep the order of
  # their results.json.
  known = architectures.depth_order(cells[0].family) if cells else ()
  ranked = [n for n in known if n in names]
  if len(ranked) == len(names):
    return ranked
  # Unknown names keep their place relative to their known predecessors.
  return _merge_known(names, ranked)


def _merge_known(names: List[str], ranked: List[str]) -> List[str]:
  out = list(ranked)
  for i, name in enumerate(names):
    if name in out:
      continue
    before = [n for n in names[:i] if n in out]
    out.insert(out.index(before[-1]) + 1 if before else 0, name)
  return out


def group_tables(cells: Sequence[CellResult]) -> List[Tuple[Tuple[str, ...], str,
                                                             List[CellResult]]]:
  """(evaluation key, family, cells) per table, in a stable order."""
  groups: Dict[Tuple[Tuple[str, ...], str], List[CellResult]] = {}
  for cell in cells:
    groups.setdefault((cell.evaluation, cell.family), []).append(cell)
  family_rank = {f: i for i, f in enumerate(architectures.FAMILIES)}
  keys = sorted(groups, key=lambda k: (k[0], family_rank.get(k[1], 99), k[1]))
  return [(k[0], k[1], sort_cells(groups[k])) for k in keys]


# ----------------------------------------------------------------------------------- formatting
def _pct(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def _duration(seconds: Optional[float]) -> str:
  if seconds is None:
    return "-"
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _md(text: Any) -> str:
  return str(text).replace("|", "\\|")


def _label(cell: CellResult) -> str:
  label = KIND_LABELS.get(cell.kind, "")
  return f"*{_md(cell.name)}* ({label})" if label else _md(cell.name)


def baseline_of(cell: CellResult, group: Sequence[CellResult]) -> Optional[CellResult]:
  """The random-init cell of `group` (one table) that `cell` is compared with: the same
  architecture, version and width, on the same input (whole images or patches)."""
  if cell.kind == RANDOM_INIT:
    return None
  for other in group:
    if (other.kind == RANDOM_INIT and other.architecture == cell.architecture
        and other.mode == cell.mode and other.width == cell.width
        and other.on_patches == cell.on_patches and other.best_layer):
      return other
  return None


def best_over_baseline(cell: CellResult, group: Sequence[CellResult]) -> Optional[float]:
  """Best-layer top-1 of `cell` less that of its random-init baseline (fractions)."""
  base = baseline_of(cell, group)
  if base is None or not cell.best_layer or cell.top1(cell.best_layer) is None:
    return None
  return cell.top1(cell.best_layer) - base.top1(base.best_layer)


def markdown_table(cells: Sequence[CellResult], layers: Sequence[str]) -> str:
  header = (["cell", "method", "architecture", "width", "pretext acc."] + list(layers) +
            ["best layer", "vs random init", "wall time"])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join([":--"] * 3 + ["--:"] * (len(header) - 6) + [":--", "--:", "--:"])
           + "|"]
  for cell in cells:
    best = cell.best_layer
    values = []
    for layer in layers:
      text = _pct(cell.top1(layer))
      values.append(f"**{text}**" if layer == best and text != "-" else text)
    pretext = _pct(cell.pretext_accuracy) if cell.kind != RANDOM_INIT else "-"
    gain = best_over_baseline(cell, cells)
    lines.append("| " + " | ".join(
        [_label(cell), _md(cell.method), _md(cell.arch_label()),
         str(cell.width if cell.width is not None else "-"), pretext] + values +
        [_md(best or "-"), "-" if gain is None else f"{100 * gain:+.1f}",
         _duration(cell.wall_s)]) + " |")
  return "\n".join(lines)


def _config_of(cell: CellResult) -> Dict[str, Dict[str, Any]]:
  """The settings of a cell's steps: from cell.json, else from the result files' configs."""
  out = {}
  evaluations = (cell.state or {}).get("evaluations") or {}
  if cell.evaluation_name in evaluations:
    if cell.state.get("pretext_flags"):
      out["pretext"] = dict(cell.state["pretext_flags"])
    out["evaluation"] = dict(evaluations[cell.evaluation_name])
    return out
  if cell.pretext and isinstance(cell.pretext.get("config"), dict):
    out["pretext"] = {k: v for k, v in cell.pretext["config"].items() if k != "workdir"}
  out["evaluation"] = {k: v for k, v in (cell.results.get("config") or {}).items()
                       if k not in ("workdir", "hub_module")}
  return out


def _flag_text(flags: Mapping[str, Any]) -> str:
  """The flags as a command line, the grid's way (lists comma-joined, None left out)."""
  shown = {k: ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v
           for k, v in flags.items() if v is not None}
  return " ".join(grid_flags.flags_to_args(shown))


STEP_TITLES = {"pretext": "Pretext training (train_and_eval.py)",
               "evaluation": "Per-layer evaluation (train_and_eval.py --task=linear_eval)"}


def configs_section(cells: Sequence[CellResult]) -> str:
  """The settings of all cells: those shared by every cell once, then each cell's own."""
  lines = ["## Configs", ""]
  pretext, seen = [], set()
  for c in cells:
    config = _config_of(c).get("pretext")
    if config is not None and c.name not in seen:
      seen.add(c.name)
      pretext.append((c.name, config))
  lines += _settings_block(STEP_TITLES["pretext"], pretext)
  names = []
  for c in cells:
    if c.evaluation_name not in names:
      names.append(c.evaluation_name)
  for name in names:
    title = STEP_TITLES["evaluation"] + (f" `{name}`" if name else "")
    lines += _settings_block(title, [(c.name, _config_of(c)["evaluation"]) for c in cells
                                     if c.evaluation_name == name])
  return "\n".join(lines)


def _settings_block(title: str, configs: Sequence[Tuple[str, Mapping[str, Any]]]) -> List[str]:
  if not configs:
    return []
  first = configs[0][1]
  common = {k: v for k, v in first.items() if all(k in c and c[k] == v for _, c in configs[1:])}
  lines = [f"{title}, settings shared by every cell:", "", f"    {_flag_text(common) or '(none)'}",
           "", f"{title}, the settings of each cell beyond those:", ""]
  for name, config in configs:
    own = {k: v for k, v in config.items() if k not in common or common[k] != v}
    lines.append(f"- `{name}`: `{_flag_text(own) or '(only the shared settings)'}`")
  lines.append("")
  return lines


# -------------------------------------------------------------------------------------- outputs
def plot_table(cells: Sequence[CellResult], layers: Sequence[str], title: str, path: str) -> str:
  """Top-1 accuracy against layer depth, one line per cell; references dashed. Writes a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(max(6.0, 1.0 * len(layers) + 2), 4.5))
  styles = {"pretext": dict(linestyle="-", marker="o"),
            "supervised": dict(linestyle="--", marker="s"),
            RANDOM_INIT: dict(linestyle=":", marker="x")}
  for cell in cells:
    xs = [i for i, layer in enumerate(layers) if cell.top1(layer) is not None]
    ys = [100 * cell.top1(layers[i]) for i in xs]
    if not xs:
      continue
    label = cell.name + (f" ({KIND_LABELS[cell.kind]})" if KIND_LABELS.get(cell.kind) else "")
    ax.plot(xs, ys, label=label, **styles.get(cell.kind, {}))
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels(layers, rotation=30, ha="right")
  ax.set_xlabel("layer (by depth)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(title, fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def csv_rows(cells: Sequence[CellResult]) -> List[Dict[str, Any]]:
  rows = []
  for key, family, group in group_tables(cells):
    layers = layer_columns(group)
    for cell in group:
      gain = best_over_baseline(cell, group)
      for depth, layer in enumerate(layers):
        entry = (cell.results.get("layers") or {}).get(layer)
        if entry is None:
          continue
        rows.append(dict(
            evaluation=evaluation_title(key), family=family, cell=cell.name, root=cell.root,
            kind=cell.kind, method=cell.method, architecture=cell.architecture,
            mode=cell.mode or "", width=cell.width if cell.width is not None else "",
            layer=layer, depth=depth, dim=entry.get("dim"), top1=entry.get("top1"),
            top5=entry.get("top5"), loss=entry.get("loss"), knn_top1=entry.get("knn_top1"),
            best=int(layer == cell.best_layer), pretext_accuracy=cell.pretext_accuracy,
            best_over_random_init=gain, wall_s=cell.wall_s))
  return rows


CSV_FIELDS = ("evaluation", "family", "cell", "root", "kind", "method", "architecture", "mode",
              "width", "layer", "depth", "dim", "top1", "top5", "loss", "knn_top1", "best",
              "pretext_accuracy", "best_over_random_init", "wall_s")


def report_data(cells: Sequence[CellResult], failures: Sequence[Mapping[str, Any]] = (),
                roots: Sequence[str] = ()) -> Dict[str, Any]:
  """The report's numbers as JSON data."""
  tables = []
  for key, family, group in group_tables(cells):
    layers = layer_columns(group)
    tables.append(dict(
        evaluation=evaluation_title(key), evaluation_key=list(key), family=family,
        layers=layers,
        cells=[dict(name=c.name, root=c.root, kind=c.kind, method=c.method,
                    architecture=c.architecture, mode=c.mode, width=c.width,
                    pretext_accuracy=c.pretext_accuracy, best_layer=c.best_layer,
                    best_top1=c.top1(c.best_layer) if c.best_layer else None,
                    best_over_random_init=best_over_baseline(c, group), wall_s=c.wall_s,
                    layers={n: (c.results.get("layers") or {}).get(n) for n in layers
                            if n in (c.results.get("layers") or {})})
               for c in group]))
  return dict(format_version=1, generated=_now(), roots=[os.path.abspath(r) for r in roots],
              tables=tables,
              failed=[{k: f.get(k) for k in ("name", "root", "failed_step", "exit_code", "error")}
                      for f in failures])


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_report(cells: Sequence[CellResult], out_dir: str, roots: Sequence[str] = (),
                 failures: Sequence[Mapping[str, Any]] = (), notes: Sequence[str] = (),
                 title: str = "Per-layer evaluation") -> Dict[str, Any]:
  """Writes report.md, report.csv, report.json and the plots to `out_dir`; returns the paths."""
  os.makedirs(out_dir, exist_ok=True)
  lines = [f"# {title}", ""]
  lines.append(f"Generated {_now()} from {len(cells)} evaluated cell(s) in "
               + ", ".join(f"`{os.path.abspath(r)}`" for r in roots) + ".")
  lines.append("")
  lines.append("Each table: top-1 accuracy (%) on the test split of a linear (or MLP) classifier "
               "trained on the frozen features of each layer, layers in depth order; **bold**: "
               "the row's best layer. *pretext acc.*: accuracy of the pretext task on its "
               "validation split (for the supervised reference, the class labels). Reference "
               "rows: the supervised network and the randomly initialised one (baseline). "
               "*vs random init*: the row's best-layer top-1 less that of the random-init "
               "baseline of the same architecture and width on the same input (whole images, "
               "or patches for the patch methods), in points. "
               "*wall time*: training + export + evaluation of the cell, including start-up.")
  lines.append("")
  plots = []
  for key, family, group in group_tables(cells):
    layers = layer_columns(group)
    title_text = f"{evaluation_title(key)} - {architectures.FAMILY_TITLES.get(family, family)}"
    lines.append(f"## {title_text}")
    lines.append("")
    lines.append(markdown_table(group, layers))
    lines.append("")
    name = f"{_slug('_'.join(k for k in key if k))}_{_slug(family)}.png"
    plots.append(plot_table(group, layers, title_text, os.path.join(out_dir, name)))
    lines.append(f"![{title_text}]({name})")
    lines.append("")
  if not cells:
    lines.append("No evaluated cells yet.")
    lines.append("")
  if failures:
    lines.append("## Failed cells")
    lines.append("")
    lines.append("| cell | step | exit | error | log |")
    lines.append("|:--|:--|--:|:--|:--|")
    for f in failures:
      lines.append(f"| {_md(f.get('name'))} | {_md(f.get('failed_step', '-'))} | "
                   f"{_md(f.get('exit_code', '-'))} | {_md(f.get('error', ''))} | "
                   f"`{_md(f.get('log', ''))}` |")
    lines.append("")
  if notes:
    lines.append("## Notes")
    lines.append("")
    lines.extend(f"- {n}" for n in notes)
    lines.append("")
  if cells:
    lines.append(configs_section(cells))
  md_path = os.path.join(out_dir, "report.md")
  files.write_text_atomic(md_path, "\n".join(lines).rstrip() + "\n")
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
  writer.writeheader()
  for row in csv_rows(cells):
    writer.writerow({k: "" if v is None else v for k, v in row.items()})
  csv_path = os.path.join(out_dir, "report.csv")
  files.write_text_atomic(csv_path, buffer.getvalue())
  json_path = os.path.join(out_dir, "report.json")
  files.write_json_atomic(json_path, report_data(cells, failures, roots))
  return dict(markdown=md_path, csv=csv_path, json=json_path, plots=plots)



def summary_text(cells: Sequence[CellResult], failures: Sequence[Mapping[str, Any]] = ()) -> str:
  """A short plain-text summary: per table, each cell's best layer and accuracy."""
  lines = []
  for key, family, group in group_tables(cells):
    lines.append(f"{evaluation_title(key)} - {architectures.FAMILY_TITLES.get(family, family)}:")
    width = max(len(c.name) for c in group)
    for c in group:
      best = c.best_layer
      pretext = (f"  pretext {_pct(c.pretext_accuracy)}%"
                 if c.pretext_accuracy is not None else "")
      lines.append(f"  {c.name.ljust(width)}  best {str(best).ljust(10)} "
                   f"{_pct(c.top1(best) if best else None):>5}%{pretext}  "
                   f"({_duration(c.wall_s)})")
  if failures:
    lines.append(f"failed: {len(failures)}")
    for f in failures:
      lines.append(f"  {f.get('name')}: step {f.get('failed_step', '?')}, exit "
                   f"{f.get('exit_code', '?')}: {f.get('error', '')}")
  if not lines:
    lines.append("no evaluated cells")
  return "\n".join(lines)


def make_report(roots: Sequence[str], out_dir: Optional[str] = None,
                title: str = "Per-layer evaluation") -> Tuple[Dict[str, Any], str]:
  """Loads the roots, writes the report (default: <first root>/report); returns (paths, summary)."""
  cells, notes = load_cells(roots)
  failures = load_failures(roots, [c.name for c in cells])
  out_dir = out_dir or os.path.join(roots[0], "report")
  paths = write_report(cells, out_dir, roots, failures, notes, title)
  return paths, summary_text(cells, failures)
