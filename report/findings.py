"""The report's findings: the 2019 paper's layer question asked of each table's results, in
sentences written from them. The paper found that ResNets keep their representation quality up
to the pre-logits while VGG's falls towards its end; here, per trained cell (the supervised
reference included), where its probes peak and whether its last layer keeps that quality, and per
architecture family how many of its cells keep it to the end.

A cell keeps its quality to the end where its last probed layer (in depth order, without
`logits`) is within HOLD_POINTS of its best layer's top-1.
"""

from typing import List, Optional, Sequence

from core import architectures
from core.options import RANDOM_INIT
from report.cells import CellResult, FINE_TUNED
from report.tables import best_over_baseline, group_tables, layer_columns, md, pct

HOLD_POINTS = 1.0


def last_layer(cell: CellResult) -> Optional[str]:
  """The deepest layer with a top-1 (logits left out)."""
  layers = [n for n in layer_columns([cell])
            if n != architectures.LOGITS and cell.top1(n) is not None]
  return layers[-1] if layers else None


def keeps_to_the_end(cell: CellResult) -> Optional[bool]:
  """Whether the last layer is within HOLD_POINTS of the best one (None: no probes)."""
  best, last = cell.best_layer, last_layer(cell)
  if not best or not last or cell.top1(best) is None:
    return None
  return 100 * (cell.top1(best) - cell.top1(last)) <= HOLD_POINTS


def cell_finding(cell: CellResult, group: Sequence[CellResult]) -> Optional[str]:
  """One sentence on where `cell` peaks and what its last layer keeps, and its gain over its
  random-init baseline at its best layer."""
  best, last = cell.best_layer, last_layer(cell)
  keeps = keeps_to_the_end(cell)
  if keeps is None:
    return None
  top_best, top_last = cell.top1(best), cell.top1(last)
  drop = 100 * (top_best - top_last)
  if best == last:
    text = f"rises to its last layer, {last} ({pct(top_best)})"
  elif keeps:
    text = (f"peaks at {best} ({pct(top_best)}) and keeps it to its last layer, {last} "
            f"({pct(top_last)}, {drop:.1f} points below)")
  else:
    text = (f"peaks at {best} ({pct(top_best)}) and falls by {drop:.1f} points to its last "
            f"layer, {last} ({pct(top_last)})")
  gain = best_over_baseline(cell, group)
  if gain is not None:
    text += f"; {100 * gain:+.1f} points over random init at its best layer"
  return text


def findings_section(cells: Sequence[CellResult]) -> List[str]:
  """The report's Findings section (Markdown lines; none without trained cells)."""
  lines: List[str] = []
  for key, family, group in group_tables(cells):
    if key[4] == FINE_TUNED:  # One column: no layers to compare.
      continue
    trained = [c for c in group if c.kind != RANDOM_INIT]
    found = [(c, cell_finding(c, group)) for c in trained]
    found = [(c, text) for c, text in found if text]
    if not found:
      continue
    kept = sum(bool(keeps_to_the_end(c)) for c, _ in found)
    title = architectures.FAMILY_TITLES.get(family, family)
    lines.append(f"**{title}** ({key[1]}, {key[4]} probes): {kept} of {len(found)} trained "
                 f"cell(s) keep their quality to the last layer (within {HOLD_POINTS:g} point "
                 "of their best).")
    lines.append("")
    lines += [f"- *{md(c.name)}* {text}." for c, text in found]
    lines.append("")
  if not lines:
    return []
  return ["## Findings", "",
          "The paper's layer question, from these results: where each trained network's probes "
          "peak, and whether its last layer keeps that quality (ResNets did up to the "
          "pre-logits in the 2019 paper; VGG did not).", ""] + lines
