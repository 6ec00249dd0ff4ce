"""The report's layer similarity: every cka.json under the roots (train_and_eval.py --task=cka,
in a grid cell's evaluation folder or anywhere else), as a heatmap and a table."""

import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from core import files
from core.files import CKA_FILE
from report.cells import SKIPPED_DIRS, slug


def cka_dirs(root: str) -> List[str]:
  """The directories under `root` (itself included) that hold a cka.json, in walk order."""
  found = []
  for directory, subdirs, names in os.walk(os.path.abspath(root)):
    subdirs[:] = sorted(d for d in subdirs if d not in SKIPPED_DIRS and not d.startswith("."))
    if CKA_FILE in names:
      found.append(directory)
  return found


def find_cka(roots: Sequence[str]) -> List[Tuple[str, Dict[str, Any]]]:
  """(name relative to its root, contents) of every readable cka.json under the roots."""
  found = []
  for root in roots:
    root = os.path.abspath(root)
    for directory in cka_dirs(root):
      data = files.read_json(os.path.join(directory, CKA_FILE))
      if isinstance(data, dict) and isinstance(data.get("matrix"), list):
        found.append((os.path.relpath(directory, root) if directory != root else
                      os.path.basename(root), data))
  return found


def side_label(side: Mapping[str, Any]) -> str:
  """A backbone in a few words: its task, architecture and width, and the export's folder."""
  hub = str(side.get("hub_module") or "?").rstrip("/")
  if hub == "random_init":
    where = "random init"
  elif os.path.basename(hub) == "export":  # <pretext workdir>/export: the workdir's name.
    where = os.path.basename(os.path.dirname(hub))
  else:
    where = "/".join(hub.split("/")[-2:])
  arch = side.get("architecture") or "?"
  mode = f" {side['mode']}" if side.get("mode") and str(arch).startswith("resnet") else ""
  step = f", step {side['step']}" if side.get("step") is not None else ""
  return f"{side.get('task') or '?'} {arch}{mode} w{side.get('filters_factor')} ({where}{step})"


def plot_cka(data: Mapping[str, Any], title: str, path: str) -> str:
  """The CKA matrix as a heatmap (rows: backbone A's layers by depth, columns: B's)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  matrix = np.array([[np.nan if v is None else v for v in row] for row in data["matrix"]], float)
  rows, cols = data["layers_a"], data["layers_b"]
  fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.0 + 0.6 * len(rows)))
  image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="magma", origin="lower")
  for i in range(len(rows)):
    for j in range(len(cols)):
      if np.isfinite(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="white" if matrix[i, j] < 0.6 else "black")
  ax.set_xticks(range(len(cols)))
  ax.set_xticklabels(cols, rotation=30, ha="right", fontsize=8)
  ax.set_yticks(range(len(rows)))
  ax.set_yticklabels(rows, fontsize=8)
  ax.set_xlabel(side_label(data["b"]), fontsize=8)
  ax.set_ylabel(side_label(data["a"]), fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="linear CKA")
  fig.tight_layout()
  fig.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(fig)
  return path


def cka_section(found: Sequence[Tuple[str, Mapping[str, Any]]], out_dir: str = "",
                draw: bool = True) -> Tuple[List[str], List[str]]:
  """(markdown lines, plot paths) of the layer-similarity section; `draw`: the heatmaps too, in
  `out_dir` (else the tables alone)."""
  if not found:
    return [], []
  lines = ["## Layer similarity (linear CKA)", "",
           "Linear CKA (Kornblith et al. 2019) between the layers of two backbones on the same "
           "images, estimated in minibatches with the unbiased HSIC estimator (1: the same "
           "representation up to rotation and scale; near 0: unrelated). Rows: the first "
           "backbone's layers by depth, columns: the second's.", ""]
  plots = []
  for name, data in found:
    title = f"{side_label(data['a'])} vs {side_label(data['b'])}"
    dataset = data.get("dataset") or {}
    lines += [f"### {name}", "",
              f"{title}: {data.get('num_examples')} images of {dataset.get('name')}:"
              f"{dataset.get('split')}, {data.get('num_batches')} minibatches of "
              f"{data.get('batch_size')}.", ""]
    png = f"cka_{slug(name)}.png"
    if draw:
      plots.append(plot_cka(data, f"linear CKA: {name}", os.path.join(out_dir, png)))
    header = ["A \\ B"] + list(data["layers_b"])
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|:--|" + "--:|" * len(data["layers_b"]))
    for layer, row in zip(data["layers_a"], data["matrix"]):
      lines.append(f"| {layer} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in row)
                   + " |")
    lines += ["", f"![{title}]({png})", ""] if draw else [""]
  return lines, plots
