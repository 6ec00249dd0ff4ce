"""The report's files: report.md, report.csv, report.json and one PNG plot of top-1 accuracy
against layer depth per table; a plain-text summary. report.md ends with the run record of every
cell (report/records.py).

report.csv has one row per cell and layer of every table, its columns CSV_FIELDS (top1, top5 and
knn_top1 fractions; best 1 on the cell's best layer; best_over_random_init in points). report.json:

  {"format_version": 1, "generated": local time, "roots": [the grid roots read],
   "tables": [{"evaluation": its title, "evaluation_key": [what groups the cells: evaluation,
               dataset, splits, ...], "family", "layers": [the table's columns, by depth],
               "cells": [{"name", "root", "kind", "method", "architecture", "mode", "width",
                          "pretext_accuracy", "pretext_metric": {"name", "value"} | null,
                          "best_layer", "best_top1", "best_over_random_init",
                          "compared_with", "wall_s", "layers": {layer: results.json's entry},
                          "runs": {phase: {"run", "times"}}}]}],
   "failed": [{"name", "root", "failed_step", "exit_code", "error"}],
   "cka": [{"name", and of cka.json "a", "b", "layers_a", "layers_b", "matrix", "dataset",
            "num_examples"}: the layer similarities the report draws]}
"""

import csv
import datetime
import io
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import files
from core.durations import format_duration
from core.options import RANDOM_INIT
from report import findings
from report import over_training
from report import records
from report import seeds
from report import similarity
from report.cells import (CellResult, KIND_LABELS, evaluation_title, load_cells, load_failures,
                          slug)
from report.tables import (baseline_label, best_over_baseline, configs_section, group_tables,
                           layer_columns, markdown_table, md, pct, pretext_text)


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
      baseline = baseline_label(cell, group) if cell.kind != RANDOM_INIT else ""
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
            head_lr=(entry.get("setting") or {}).get("lr", ""),
            head_weight_decay=(entry.get("setting") or {}).get("weight_decay", ""),
            best=int(layer == cell.best_layer), pretext_accuracy=cell.pretext_accuracy,
            pretext_metric=(cell.pretext_metric or ("", ""))[0],
            pretext_value=(cell.pretext_metric or ("", ""))[1],
            best_over_random_init=gain, compared_with=baseline, wall_s=cell.wall_s))
  return rows


CSV_FIELDS = ("evaluation", "family", "cell", "root", "kind", "method", "architecture", "mode",
              "width", "layer", "depth", "dim", "top1", "top5", "loss", "knn_top1", "head_lr",
              "head_weight_decay", "best",
              "pretext_accuracy", "pretext_metric", "pretext_value", "best_over_random_init",
              "compared_with", "wall_s")


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
                    pretext_accuracy=c.pretext_accuracy,
                    pretext_metric=dict(zip(("name", "value"), c.pretext_metric))
                    if c.pretext_metric else None, best_layer=c.best_layer,
                    best_top1=c.top1(c.best_layer) if c.best_layer else None,
                    best_over_random_init=best_over_baseline(c, group),
                    compared_with=baseline_label(c, group) if c.kind != RANDOM_INIT else None,
                    wall_s=c.wall_s,
                    layers={n: (c.results.get("layers") or {}).get(n) for n in layers
                            if n in (c.results.get("layers") or {})},
                    runs={phase: dict(run=run, times=times)
                          for phase, run, times in records.records_of(c)})
               for c in group]))
  return dict(format_version=1, generated=_now(), roots=[os.path.abspath(r) for r in roots],
              tables=tables,
              failed=[{k: f.get(k) for k in ("name", "root", "failed_step", "exit_code", "error")}
                      for f in failures])


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def write_report(cells: Sequence[CellResult], out_dir: str, roots: Sequence[str] = (),
                 failures: Sequence[Mapping[str, Any]] = (), notes: Sequence[str] = (),
                 title: str = "Per-layer evaluation",
                 similarities: Sequence[Tuple[str, Mapping[str, Any]]] = ()) -> Dict[str, Any]:
  """Writes report.md, report.csv, report.json and the plots to `out_dir`; returns the paths.
  `similarities`: (name, cka.json contents) to draw (similarity.find_cka)."""
  os.makedirs(out_dir, exist_ok=True)
  lines = [f"# {title}", ""]
  lines.append(f"Generated {_now()} from {len(cells)} evaluated cell(s) in "
               + ", ".join(f"`{os.path.abspath(r)}`" for r in roots) + ".")
  lines.append("")
  lines.append("Each table: top-1 accuracy (%) on the test split of a linear (or MLP) classifier "
               "trained on the frozen features of each layer, layers in depth order; **bold**: "
               "the row's best layer. *pretext*: accuracy of the pretext task on its "
               "validation split (for the supervised reference, the class labels), or the "
               "measure the method names as its own where that is not an accuracy (BYOL: the "
               "cosine of prediction and target; Barlow Twins: the mean correlation of a "
               "dimension across views; SwAV: the codes' entropy; MAE: the PSNR of its "
               "reconstruction of the masked patches, in dB; inpainting: the PSNR of its fill "
               "of the hidden region, in dB; colorization: the per-pixel accuracy of its colour "
               "bins). Reference "
               "rows: the supervised network and the randomly initialised one (baseline). "
               "*vs random init*: the row's best-layer top-1 less that of the random-init "
               "baseline of the same architecture and width on the same evaluation input (the "
               "same preprocessing and sizes: whole images, standardised images, or patches "
               "for the patch methods), in points; *compared with*: that baseline (\"other "
               "input\" where the results do not show it was evaluated on the same input; for the "
               "cached probes, specs that differ only in ops that act in training alone, a "
               "flip say, are the same input). "
               "*wall time*: training + export + evaluation of the cell, including start-up. "
               "Fine-tuning tables (train_and_eval.py --task=fine_tune): top-1 of the whole "
               "backbone trained with a new linear head on pre_logits (their one column), "
               "against the random-init backbone fine-tuned the same way.")
  lines.append("")
  plots = []
  for key, family, group in group_tables(cells):
    layers = layer_columns(group)
    title_text = f"{evaluation_title(key)} - {architectures.FAMILY_TITLES.get(family, family)}"
    lines.append(f"## {title_text}")
    lines.append("")
    lines.append(markdown_table(group, layers))
    lines.append("")
    lines += seeds.spread_table(group, layers)
    note = records.mismatch_note(group)
    if note:
      lines += [note, ""]
    name = f"{slug('_'.join(k for k in key if k))}_{slug(family)}.png"
    plots.append(plot_table(group, layers, title_text, os.path.join(out_dir, name)))
    lines.append(f"![{title_text}]({name})")
    lines.append("")
  if not cells:
    lines.append("No evaluated cells yet.")
    lines.append("")
  lines += findings.findings_section(cells)
  for section, section_plots in (over_training.series_section(cells, out_dir),
                                 similarity.cka_section(similarities, out_dir)):
    lines += section
    plots += section_plots
  if failures:
    lines.append("## Failed cells")
    lines.append("")
    lines.append("| cell | step | exit | error | log |")
    lines.append("|:--|:--|--:|:--|:--|")
    for f in failures:
      lines.append(f"| {md(f.get('name'))} | {md(f.get('failed_step', '-'))} | "
                   f"{md(f.get('exit_code', '-'))} | {md(f.get('error', ''))} | "
                   f"`{md(f.get('log', ''))}` |")
    lines.append("")
  if notes:
    lines.append("## Notes")
    lines.append("")
    lines.extend(f"- {n}" for n in notes)
    lines.append("")
  if cells:
    lines.append(configs_section(cells))
    lines.append(records.records_section(cells))
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
  data = report_data(cells, failures, roots)
  data["cka"] = [dict(name=name, **{k: d.get(k) for k in ("a", "b", "layers_a", "layers_b",
                                                          "matrix", "dataset", "num_examples")})
                 for name, d in similarities]
  files.write_json_atomic(json_path, data)
  return dict(markdown=md_path, csv=csv_path, json=json_path, plots=plots)



def summary_text(cells: Sequence[CellResult], failures: Sequence[Mapping[str, Any]] = ()) -> str:
  """A short plain-text summary: per table, each cell's best layer and accuracy."""
  lines = []
  for key, family, group in group_tables(cells):
    lines.append(f"{evaluation_title(key)} - {architectures.FAMILY_TITLES.get(family, family)}:")
    width = max(len(c.name) for c in group)
    for c in group:
      best = c.best_layer
      pretext = f"  pretext {pretext_text(c)}" if c.pretext_metric is not None else ""
      lines.append(f"  {c.name.ljust(width)}  best {str(best).ljust(10)} "
                   f"{pct(c.top1(best) if best else None):>5}%{pretext}  "
                   f"({format_duration(c.wall_s, '-', hours_with_seconds=False)})")
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
  paths = write_report(cells, out_dir, roots, failures, notes, title,
                       similarities=similarity.find_cka(roots))
  return paths, summary_text(cells, failures)
