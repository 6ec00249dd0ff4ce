"""The report's tables: layer columns in depth order, one table per evaluation and architecture
family, each row's gain over the random-init baseline on the same input, the settings of the
cells."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import options
from core import specs
from core.durations import format_duration
from core.options import RANDOM_INIT
from report.cells import CellResult, KIND_LABELS, sort_cells


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


def pct(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.1f}"


def pretext_text(cell: CellResult) -> str:
  """The cell's pretext metric as the tables show it: an accuracy in %, another by its name."""
  metric = cell.pretext_metric
  if metric is None:
    return "-"
  name, value = metric
  return f"{pct(value)}%" if name == "accuracy" else f"{name} {value:.3f}"


def md(text: Any) -> str:
  return str(text).replace("|", "\\|")


def _label(cell: CellResult) -> str:
  label = KIND_LABELS.get(cell.kind, "")
  return f"*{md(cell.name)}* ({label})" if label else md(cell.name)


def baseline_of(cell: CellResult, group: Sequence[CellResult]) -> Optional[CellResult]:
  """The random-init cell of `group` (one table) that `cell` is compared with: the one the grid
  paired it with (cell.json's `baseline`: the same architecture, version and width on the same
  evaluation input); for results without that pairing, a random-init cell of the same
  architecture, version and width on the same spec, else on the same kind of input (whole
  images or patches: `same_input` tells)."""
  if cell.kind == RANDOM_INIT:
    return None
  bases = [o for o in group if o.kind == RANDOM_INIT and o.best_layer]
  named = (cell.state or {}).get("baseline")
  if named:
    return next((o for o in bases if o.name == named), None)
  bases = [o for o in bases if o.architecture == cell.architecture and o.mode == cell.mode
           and o.width == cell.width and o.on_patches == cell.on_patches
           and _settings_agree(cell, o)]
  same = [o for o in bases if same_input(cell, o)]
  return (same or bases or [None])[0]


def _settings_agree(cell: CellResult, base: CellResult) -> bool:
  """Whether the backbone settings beside architecture and width (MODEL_SETTINGS: a ViT's
  position embeddings, say) that both results record agree."""
  ours, theirs = ((c.results.get("source") or {}) for c in (cell, base))
  return all(ours[k] == theirs[k] for k in architectures.MODEL_SETTINGS
             if k in ours and k in theirs)


def same_input(cell: CellResult, base: CellResult) -> bool:
  """Whether `base` was evaluated on `cell`'s input: paired so by the grid (and, where both
  record their spec, on the same one: a cell of the same name from another root may not be),
  or on the same recorded spec (for the cached probes, as their deterministic pass runs it)."""
  if (cell.state or {}).get("baseline"):
    return cell.state["baseline"] == base.name and _specs_agree(cell, base)
  return bool(cell.eval_spec and base.eval_spec) and _specs_agree(cell, base)


def _specs_agree(cell: CellResult, base: CellResult) -> bool:
  """Whether the recorded specs of a cell and the baseline the grid paired it with agree: the
  same, or, for the cached probes, the same as their deterministic pass runs them (no flips and,
  below probability 1, no to_gray; the grid compared the real probability)."""
  if not (cell.eval_spec and base.eval_spec) or cell.eval_spec == base.eval_spec:
    return True
  return cell.deterministic_input and (specs.deterministic_spec(cell.eval_spec, 0.0) ==
                                       specs.deterministic_spec(base.eval_spec, 0.0))


def baseline_label(cell: CellResult, group: Sequence[CellResult]) -> str:
  """The name of the baseline `cell` is compared with, flagged where its input differs."""
  base = baseline_of(cell, group)
  if base is None:
    return "-"
  return base.name if same_input(cell, base) else f"{base.name} (other input)"


def best_over_baseline(cell: CellResult, group: Sequence[CellResult]) -> Optional[float]:
  """Best-layer top-1 of `cell` less that of its random-init baseline (fractions)."""
  base = baseline_of(cell, group)
  if base is None or not cell.best_layer or cell.top1(cell.best_layer) is None:
    return None
  return cell.top1(cell.best_layer) - base.top1(base.best_layer)


def markdown_table(cells: Sequence[CellResult], layers: Sequence[str]) -> str:
  header = (["cell", "method", "architecture", "width", "pretext"] + list(layers) +
            ["best layer", "vs random init", "compared with", "wall time"])
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join([":--"] * 3 + ["--:"] * (len(header) - 7) +
                          [":--", "--:", ":--", "--:"]) + "|"]
  for cell in cells:
    best = cell.best_layer
    values = []
    for layer in layers:
      text = pct(cell.top1(layer))
      values.append(f"**{text}**" if layer == best and text != "-" else text)
    pretext = md(pretext_text(cell)) if cell.kind != RANDOM_INIT else "-"
    gain = best_over_baseline(cell, cells)
    lines.append("| " + " | ".join(
        [_label(cell), md(cell.method), md(cell.arch_label()),
         str(cell.width if cell.width is not None else "-"), pretext] + values +
        [md(_best_text(cell)), "-" if gain is None else f"{100 * gain:+.1f}",
         md(baseline_label(cell, cells)),
         format_duration(cell.wall_s, '-', hours_with_seconds=False)]) + " |")
  return "\n".join(lines)


def _best_text(cell: CellResult) -> str:
  """The best layer, and the setting of its head where one was chosen on a minival."""
  if not cell.best_layer:
    return "-"
  entry = (cell.results.get("layers") or {}).get(cell.best_layer) or {}
  setting = entry.get("setting")
  if not setting or not entry.get("minival"):
    return cell.best_layer
  return f"{cell.best_layer} (lr {setting['lr']:g}, wd {setting['weight_decay']:g})"


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
  return " ".join(options.flags_to_args(shown))


STEP_TITLES = {"pretext": "Pretext training (train_and_eval.py)",
               "linear_eval": "Per-layer evaluation (train_and_eval.py --task=linear_eval)",
               "fine_tune": "Fine-tuning (train_and_eval.py --task=fine_tune)",
               "probe_series": "Probes over training (train_and_eval.py --task=probe_series)"}


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
    task = next((c.results.get("evaluation") for c in cells if c.evaluation_name == name),
                None) or "linear_eval"
    title = STEP_TITLES.get(task, STEP_TITLES["linear_eval"]) + (f" `{name}`" if name else "")
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
