"""What every part of the grid runner shares: the names of the grid root's files, its error."""

import datetime
import os
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_AND_EVAL = os.path.join(REPO_ROOT, "train_and_eval.py")

# <root>/grid_status.json; in each cell folder <root>/<cell>/: cell.json, log.txt, the pretext
# step's pretext_results.json and export/, each evaluation's <name>/results.json.
STATUS_FILE = "grid_status.json"
CELL_FILE = "cell.json"
LOG_FILE = "log.txt"
RESULTS_FILE = "results.json"
PRETEXT_RESULTS_FILE = "pretext_results.json"
# A cell's SLURM jobs keep their scripts, logs and records in <root>/<cell>/slurm/.
SLURM_DIR = "slurm"
RANDOM_INIT = "random_init"


class GridError(ValueError):
  """A grid file, a cell selection or an executor setting is invalid; the message names the
  file, the cell and the key (or the setting)."""


def now() -> str:
  """The local time with its offset, to the second: the status file's timestamps."""
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def fmt_duration(seconds: Optional[float]) -> str:
  """`1h02m03s`, `2m03s`, `3s`; `?` for an unknown duration."""
  if seconds is None:
    return "?"
  seconds = int(round(max(seconds, 0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
