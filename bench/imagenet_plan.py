"""The plan of both ImageNet grids (benchmark.py --plan under --executor=slurm) at ImageNet's size,
without ImageNet: the ImageNet-shaped set (datasets/imagenet_like.py, a few JPEGs) with TFDS
metadata that says ImageNet's split sizes. What the plan reads of a dataset (the splits' sizes,
the classes, the pipelines' element shapes) is then ImageNet's; no record is read.

  .venv/bin/python bench/imagenet_plan.py                       # prints both plans (4 minutes)
  .venv/bin/python bench/imagenet_plan.py --out=docs/imagenet_plan.md

The disk is the grid's need at its peak (the cluster's shared file system is not this machine's).
"""

import argparse
import glob
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()

IMAGENET_SIZES = {"train": 1_281_167, "validation": 50_000}
GRIDS = ("configs/grids/imagenet_paper.toml", "configs/grids/imagenet_semi_supervised.toml")


def imagenet_sized(data_dir: str) -> str:
  """Writes the ImageNet-shaped set into `data_dir` with metadata of ImageNet's split sizes (for
  plans only: its records are a few); returns `data_dir`."""
  from datasets import imagenet_like  # pylint: disable=g-import-not-at-top
  imagenet_like.prepare(data_dir, classes=2, train_per_class=4, val_per_class=2)
  (path,) = glob.glob(os.path.join(data_dir, imagenet_like.NAME, "*", "dataset_info.json"))
  with open(path) as f:
    info = json.load(f)
  for split in info["splits"]:
    split["shardLengths"] = [str(IMAGENET_SIZES[split["name"]])]
  with open(path, "w") as f:
    json.dump(info, f)
  return data_dir


def plan(grid_file: str, data_dir: str, root: str, patterns=(), free_disk=None):
  """(problems, rows, disk, cells) of the grid's plan under SLURM (grid/plan.py); `free_disk`:
  the bytes free at the root (default: measured there)."""
  from grid import flags as flags_lib  # pylint: disable=g-import-not-at-top
  from grid import gridfile  # pylint: disable=g-import-not-at-top
  from grid import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from grid import preflight  # pylint: disable=g-import-not-at-top
  from grid.cells import select_cells  # pylint: disable=g-import-not-at-top
  from grid.common import TRAIN_AND_EVAL  # pylint: disable=g-import-not-at-top
  grid = gridfile.load_grid(grid_file, flags_lib.known_flags(), overrides={"data_dir": data_dir})
  cells = select_cells(grid, patterns)
  budget = plan_lib.SlurmBudget(grid.slurm["max_queued"])
  problems, plans, placements = preflight.check(cells, root, [sys.executable, TRAIN_AND_EVAL],
                                                budget=budget)
  rows, more, disk = plan_lib.assess(cells, plans, placements, budget, root, free_disk=free_disk)
  return problems + more, rows, disk, cells


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=None, help="Also write the plans as Markdown here.")
  args = parser.parse_args()
  from grid import plan as plan_lib  # pylint: disable=g-import-not-at-top
  parts = ["# The ImageNet grids' plans at ImageNet's size", "",
           "Made by `.venv/bin/python bench/imagenet_plan.py --out=docs/imagenet_plan.md` "
           "(benchmark.py --plan under --executor=slurm, on ImageNet's split sizes: "
           f"{IMAGENET_SIZES['train']} training and {IMAGENET_SIZES['validation']} validation "
           "images). GiB per GPU of the training step (or the extraction), against the grid's "
           "`gpu_mem` (a step must fit in 90% of it); host GiB per node against `mem`; disk "
           "GiB kept (+ written and removed by the step). Estimates: training/footprint.py.", ""]
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = imagenet_sized(os.path.join(tmp, "tfds"))
    for grid_file in GRIDS:
      problems, rows, disk, cells = plan(grid_file, data_dir, os.path.join(tmp, "root"),
                                         free_disk=1 << 60)
      text = plan_lib.table(rows, {"need": disk["need"]})  # Not this machine's disk.
      print(f"{grid_file}: {len(cells)} cells\n{text}")
      for problem in problems:
        print(f"error: {problem}")
      verdict = "every step fits" if not problems else f"{len(problems)} problem(s)"
      parts += [f"## `{grid_file}`: {len(cells)} cells, {verdict}", "", "```", text, "```", ""]
      parts += [f"- error: {p}" for p in problems] + ([""] if problems else [])
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(parts))
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
