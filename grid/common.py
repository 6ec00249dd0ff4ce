"""What every part of the grid runner shares: where the project is, its error, the time."""

import datetime
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_AND_EVAL = os.path.join(REPO_ROOT, "train_and_eval.py")

# A cell's SLURM jobs keep their scripts, logs and records in <root>/<cell>/slurm/ (the other
# files of a grid root: core/files.py).
SLURM_DIR = "slurm"


class GridError(ValueError):
  """A grid file, a cell selection or an executor setting is invalid; the message names the
  file, the cell and the key (or the setting)."""


def now() -> str:
  """The local time with its offset, to the second: the status file's timestamps."""
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
