"""The report's probes over training: per cell with a series (series.json of
train_and_eval.py --task=probe_series), a layer x training-step heatmap of probe accuracy, a plot
of pretext accuracy and best-layer probe accuracy against the step, and one line saying whether
the two rise together."""

import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import files
from core.files import SERIES_FILE
from report.cells import CellResult, slug

# Spearman's rank correlation at or above which the two are said to rise together.
TOGETHER = 0.7


def series_of(cell: CellResult) -> Optional[Dict[str, Any]]:
  """The cell's series.json (beside its results.json), if it has one with points."""
  data = files.read_json(os.path.join(cell.directory, SERIES_FILE)) if cell.directory else None
  return data if isinstance(data, dict) and data.get("points") else None


def _ranks(values: Sequence[float]) -> List[float]:
  """Ranks from 0, ties sharing their mean rank."""
  order = sorted(range(len(values)), key=lambda i: values[i])
  ranks = [0.0] * len(values)
  i = 0
  while i < len(order):
    j = i
    while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
      j += 1
    for k in range(i, j + 1):
      ranks[order[k]] = (i + j) / 2
    i = j + 1
  return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> Optional[float]:
  """Spearman's rank correlation; None with fewer than 3 pairs or a constant side."""
  if len(xs) < 3:
    return None
  rx, ry = _ranks(xs), _ranks(ys)
  mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
  sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
  sxx = sum((a - mx) ** 2 for a in rx)
  syy = sum((b - my) ** 2 for b in ry)
  if not sxx or not syy:
    return None
  return sxy / (sxx * syy) ** 0.5


def verdict(points: Sequence[Mapping[str, Any]]) -> str:
  """One line: do pretext accuracy and best-layer probe accuracy rise together over training?"""
  pairs = [(p["pretext_accuracy"], p["best_layer"]["top1"]) for p in points
           if p.get("pretext_accuracy") is not None and (p.get("best_layer") or {}).get("top1")
           is not None]
  first, last = points[0], points[-1]
  if len(points) == 1:
    return (f"1 checkpoint (step {first['step']}): best layer {first['best_layer']['name']} "
            f"{100 * first['best_layer']['top1']:.1f}%.")
  moves = (f"the best layer goes from {first['best_layer']['name']} "
           f"({100 * first['best_layer']['top1']:.1f}% at step {first['step']}) to "
           f"{last['best_layer']['name']} ({100 * last['best_layer']['top1']:.1f}% at step "
           f"{last['step']})")
  rho = spearman([a for a, _ in pairs], [b for _, b in pairs])
  if rho is None:
    return f"{len(points)} checkpoint(s); {moves}; no pretext accuracies to compare with."
  together = "rise together" if rho >= TOGETHER else "do not rise together"
  return (f"pretext accuracy and best-layer probe accuracy {together} (Spearman rank "
          f"correlation {rho:+.2f} over {len(pairs)} checkpoints); {moves}.")


def plot_series(data: Mapping[str, Any], layers: Sequence[str], title: str, path: str) -> str:
  """Left: probe top-1 per layer (rows, by depth) and checkpoint (columns). Right: pretext
  accuracy and best-layer probe top-1 against the step."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  points = data["points"]
  grid = np.array([[np.nan if p["top1"].get(n) is None else 100 * p["top1"][n] for p in points]
                   for n in layers], float)
  fig, (left, right) = plt.subplots(1, 2, figsize=(6 + 0.55 * len(points), 4.2),
                                    gridspec_kw=dict(width_ratios=[max(len(points), 3), 4]))
  image = left.imshow(grid, aspect="auto", origin="lower", cmap="viridis")
  for i in range(len(layers)):
    for j in range(len(points)):
      if np.isfinite(grid[i, j]):
        left.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=7,
                  color="white" if grid[i, j] < np.nanmean(grid) else "black")
  left.set_xticks(range(len(points)))
  left.set_xticklabels([f"{p['step']}\n({p['epoch']:.2f})" for p in points], fontsize=7)
  left.set_yticks(range(len(layers)))
  left.set_yticklabels(layers, fontsize=8)
  left.set_xlabel("training step (epoch)", fontsize=8)
  left.set_title("probe top-1 (%) per layer", fontsize=9)
  fig.colorbar(image, ax=left, fraction=0.046, pad=0.02)
  steps = [p["step"] for p in points]
  right.plot(steps, [100 * p["best_layer"]["top1"] for p in points], marker="o",
             label="best-layer probe top-1")
  with_pretext = [p for p in points if p.get("pretext_accuracy") is not None]
  if with_pretext:
    right.plot([p["step"] for p in with_pretext],
               [100 * p["pretext_accuracy"] for p in with_pretext], marker="s", linestyle="--",
               label="pretext accuracy")
  right.set_xlabel("training step", fontsize=8)
  right.set_ylabel("accuracy (%)", fontsize=8)
  right.grid(True, alpha=0.3)
  right.legend(fontsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def series_table(data: Mapping[str, Any], layers: Sequence[str]) -> List[str]:
  """The series as a Markdown table: a column per checkpoint, a row per layer (top-1, %, the
  checkpoint's best in bold) and one of pretext accuracy."""
  points = data["points"]
  lines = ["| step (epoch) | " + " | ".join(f"{p['step']} ({p['epoch']:.2f})" for p in points)
           + " |", "|:--|" + "--:|" * len(points)]
  for layer in layers:
    cells = []
    for p in points:
      value = p["top1"].get(layer)
      text = "-" if value is None else f"{100 * value:.1f}"
      cells.append(f"**{text}**" if layer == (p.get("best_layer") or {}).get("name") else text)
    lines.append(f"| {layer} | " + " | ".join(cells) + " |")
  if any(p.get("pretext_accuracy") is not None for p in points):
    lines.append("| pretext accuracy | " + " | ".join(
        "-" if p.get("pretext_accuracy") is None else f"{100 * p['pretext_accuracy']:.1f}"
        for p in points) + " |")
  return lines


def series_section(cells: Sequence[CellResult], out_dir: str = "", draw: bool = True
                   ) -> Tuple[List[str], List[str]]:
  """(markdown lines, plot paths) of the probes-over-training section; `draw`: the plots too, in
  `out_dir` (else the tables alone)."""
  found = [(c, s) for c in cells for s in [series_of(c)] if s]
  if not found:
    return [], []
  lines = ["## Probes over training", "",
           "Per cell: the probe top-1 of every layer at every kept checkpoint "
           "(train_and_eval.py --task=probe_series), and whether pretext accuracy and the "
           f"best layer's probe accuracy rise together (Spearman rank correlation >= "
           f"{TOGETHER}).", ""]
  plots = []
  for cell, data in found:
    known = architectures.depth_order(cell.family)
    order = list(data.get("layer_order") or [])
    layers = [n for n in known if n in order] + [n for n in order if n not in known]
    label = cell.name + (f" ({cell.evaluation_name})" if cell.evaluation_name else "")
    lines += [f"### {label}", "", verdict(data["points"]), ""]
    lines += series_table(data, layers) + [""]
    if draw:
      png = f"over_training_{slug(label)}.png"
      plots.append(plot_series(data, layers, f"{label}: probes over training",
                               os.path.join(out_dir, png)))
      lines += [f"![{label}]({png})", ""]
  return lines, plots
