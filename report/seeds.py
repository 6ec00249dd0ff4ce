"""The report's spread over seeds: cells of one table that differ only in their random seed (a
`random_seed` axis of the grid), as the mean and range of each layer's top-1."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from core.options import RANDOM_INIT
from report.cells import CellResult


def seed_of(cell: CellResult) -> Optional[int]:
  """The seed that made the cell's numbers: its pretext training's (the baseline: its
  evaluation's)."""
  candidates = []
  if cell.kind != RANDOM_INIT:
    candidates += [((cell.pretext or {}).get("config") or {}).get("random_seed"),
                   ((cell.state or {}).get("pretext_flags") or {}).get("random_seed")]
  candidates.append((cell.results.get("config") or {}).get("random_seed"))
  for value in candidates:
    if value is not None:
      try:
        return int(value)
      except (TypeError, ValueError):
        continue
  return None


def _identity(cell: CellResult) -> Tuple[Any, ...]:
  axes = {k: str(v) for k, v in ((cell.state or {}).get("axes") or {}).items()
          if k != "random_seed"}
  return (cell.kind, cell.method, cell.architecture, cell.mode, cell.width, cell.on_patches,
          tuple(sorted(axes.items())))


def seed_groups(group: Sequence[CellResult]) -> List[List[CellResult]]:
  """The sets of cells (two or more seeds each) that differ only in their seed."""
  by_identity: Dict[Tuple[Any, ...], List[CellResult]] = {}
  for cell in group:
    by_identity.setdefault(_identity(cell), []).append(cell)
  return [cells for cells in by_identity.values()
          if len({seed_of(c) for c in cells}) >= 2]


def _spread(values: Sequence[float]) -> str:
  mean = sum(values) / len(values)
  return f"{100 * mean:.1f} ({100 * min(values):.1f}-{100 * max(values):.1f})"


def spread_table(group: Sequence[CellResult], layers: Sequence[str]) -> List[str]:
  """Markdown lines: per set of seeds, each layer's mean top-1 and its range over the seeds."""
  sets = seed_groups(group)
  if not sets:
    return []
  lines = ["Spread over seeds: top-1 mean (min-max) over the cells that differ only in their "
           "random seed.", "",
           "| cells | seeds | " + " | ".join(layers) + " | best layer |",
           "|:--|:--|" + "--:|" * len(layers) + "--:|"]
  for cells in sets:
    values = []
    for layer in layers:
      tops = [c.top1(layer) for c in cells if c.top1(layer) is not None]
      values.append(_spread(tops) if len(tops) == len(cells) else "-")
    best = [c.top1(c.best_layer) for c in cells if c.best_layer and c.top1(c.best_layer)
            is not None]
    seeds = ", ".join(str(s) for s in sorted({seed_of(c) for c in cells}, key=str))
    lines.append(f"| {', '.join(c.name for c in cells)} | {seeds} | " + " | ".join(values) +
                 f" | {_spread(best) if best else '-'} |")
  return lines + [""]
