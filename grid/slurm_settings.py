"""The [slurm] settings of a grid file, checked without a cluster: what each cell's job asks the
scheduler for, and how the grid's jobs are queued and retried.

  [slurm]                      # every cell's job; a [[cells]] entry's `slurm = {...}` overrides
  partition = "gpu"            # default: the cluster's default partition
  account = "my_lab"
  qos = "normal"
  time = "1-00:00:00"          # SLURM's formats (minutes, H:M:S, D-H, D-H:M:S) or minutes
  nodes = 1                    # more than one task in all: multi-worker training
  tasks_per_node = 1
  cpus_per_task = 8
  gpus_per_node = 1            # a one-node cell's GPUs
  mem = "64G"                  # sbatch --mem (per node)
  gpu_mem = "80G"              # memory of one of the partition's GPUs: not sent to sbatch; the
                               # plan (benchmark.py --plan) checks every step's estimate with it
  extra = { constraint = "a100", exclusive = true }   # any other sbatch option
  setup = ["module load cuda/12.4"]                   # shell lines run before the cell
  max_queued = 100             # grid-wide: jobs of this grid queued or running at once
  max_retries = 2              # grid-wide: resubmissions of a job that ended without results
"""

import math
import re
from typing import Any, Callable, Dict, Mapping, Optional

from grid.common import GridError

# [slurm] key -> the sbatch option it sets (as submitit names it: '_' for '-').
SBATCH_OPTIONS = {"partition": "partition", "account": "account", "qos": "qos", "time": "time",
                  "nodes": "nodes", "tasks_per_node": "ntasks_per_node",
                  "cpus_per_task": "cpus_per_task", "gpus_per_node": "gpus_per_node",
                  "mem": "mem"}
# sbatch options that `extra` may not set: those of the keys above, and the executor's own.
RESERVED_SBATCH = tuple(o.replace("_", "-") for o in SBATCH_OPTIONS.values()) + (
    "job-name", "output", "error", "open-mode", "signal", "comment", "wrap", "array", "ntasks")
_MEM = re.compile(r"^[1-9][0-9]*[KMGT]?$")
_OPTION = re.compile(r"^[a-z][a-z0-9-]*$")


def parse_time(value: Any) -> int:
  """A SLURM time limit in whole minutes: an integer (minutes) or "M", "M:S", "H:M:S", "D-H",
  "D-H:M", "D-H:M:S" (as sbatch --time takes them). ValueError on anything else."""
  if isinstance(value, bool):
    raise ValueError(f"{value!r} is not a time")
  if isinstance(value, int):
    if value <= 0:
      raise ValueError(f"{value} minutes: a time limit is positive")
    return value
  text = str(value).strip()
  match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
  if not match:
    raise ValueError(f"{value!r} is not a SLURM time (minutes, M:S, H:M:S, D-H, D-H:M or "
                     "D-H:M:S)")
  days, first, second, third = match.groups()
  parts = [int(p) for p in (first, second, third) if p is not None]
  if days is not None:  # D-H[:M[:S]]
    hours, minutes, seconds = (parts + [0, 0])[:3]
    total = int(days) * 1440 + hours * 60 + minutes + seconds / 60
  elif len(parts) == 3:  # H:M:S
    total = parts[0] * 60 + parts[1] + parts[2] / 60
  elif len(parts) == 2:  # M:S
    total = parts[0] + parts[1] / 60
  else:  # M
    total = parts[0]
  if total <= 0:
    raise ValueError(f"{value!r}: a time limit is positive")
  return int(math.ceil(total))


def format_time(minutes: int) -> str:
  """Minutes as SLURM writes a time limit: `D-HH:MM:SS` or `HH:MM:SS`."""
  days, rest = divmod(int(minutes), 1440)
  text = f"{rest // 60:02d}:{rest % 60:02d}:00"
  return f"{days}-{text}" if days else text


def _name(value: Any, key: str) -> str:
  if not isinstance(value, str) or not value or any(c.isspace() for c in value):
    raise ValueError(f"{key} = {value!r}: a name without spaces")
  return value


def _count(value: Any, key: str, minimum: int = 1) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f"{key} = {value!r}: an integer >= {minimum}")
  return value


def _time(value: Any, key: str) -> Any:
  try:
    parse_time(value)
  except ValueError as e:
    raise ValueError(f"{key} = {value!r}: {e}") from None
  return value


def _mem(value: Any, key: str) -> str:
  if isinstance(value, int) and not isinstance(value, bool) and value > 0:
    return f"{value}M"
  if isinstance(value, str) and _MEM.match(value.strip().upper()):
    return value.strip().upper()
  raise ValueError(f"{key} = {value!r}: sbatch --mem's form, e.g. \"64G\", \"4000M\" (an "
                   "integer is megabytes)")


def _extra(value: Any, key: str) -> Dict[str, Any]:
  if not isinstance(value, dict):
    raise ValueError(f"{key} = {value!r}: a table of sbatch options, e.g. {{ constraint = "
                     "\"a100\", exclusive = true }")
  for option, setting in value.items():
    if not _OPTION.match(option):
      raise ValueError(f"{key}: {option!r} is not an sbatch option name (long form, without "
                       "'--', e.g. constraint)")
    if option in RESERVED_SBATCH:
      raise ValueError(f"{key}: {option!r} is set by the grid runner; use the [slurm] key for "
                       "it where there is one")
    if setting is False or not isinstance(setting, (str, int, float, bool)):
      raise ValueError(f"{key}: {option} = {setting!r}: a string, a number or true")
  return dict(value)


def _setup(value: Any, key: str) -> list:
  if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
    raise ValueError(f"{key} = {value!r}: a list of shell lines, e.g. [\"module load cuda\"]")
  return list(value)


# What each cell's job asks for: key -> checker (value, key) -> the value to keep.
JOB_KEYS: Dict[str, Callable[[Any, str], Any]] = {
    "partition": _name, "account": _name, "qos": _name, "time": _time,
    "nodes": _count, "tasks_per_node": _count, "cpus_per_task": _count,
    "gpus_per_node": lambda v, k: _count(v, k, 0), "mem": _mem, "gpu_mem": _mem,
    "extra": _extra, "setup": _setup,
}
# Grid-wide only.
GRID_KEYS: Dict[str, Callable[[Any, str], Any]] = {
    "max_queued": _count, "max_retries": lambda v, k: _count(v, k, 0),
}
GRID_DEFAULTS = {"max_queued": 100, "max_retries": 2}


def parse(table: Any, where: str, grid_wide: bool = False) -> Dict[str, Any]:
  """A [slurm] table (`grid_wide`) or a cell's `slurm = {...}`, checked: known keys, values of
  the right form. GridError naming `where`, the key and the valid keys."""
  if not isinstance(table, dict):
    raise GridError(f"{where}: expected a table of SLURM settings (e.g. {{ partition = \"gpu\", "
                    f"time = \"4:00:00\" }}), got {table!r}")
  valid = dict(JOB_KEYS, **(GRID_KEYS if grid_wide else {}))
  out = {}
  for key, value in table.items():
    if key not in valid:
      grid_only = "" if grid_wide or key not in GRID_KEYS else " (a grid-wide key: set it in " \
          "[slurm])"
      raise GridError(f"{where}: unknown key {key!r}{grid_only}; valid keys: "
                      f"{', '.join(valid)}")
    try:
      out[key] = valid[key](value, key)
    except ValueError as e:
      raise GridError(f"{where}: {e}") from None
  return out


def job_settings(*tables: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """The job settings of a cell: the job keys of `tables`, later ones winning."""
  out: Dict[str, Any] = {}
  for table in tables:
    out.update({k: v for k, v in (table or {}).items() if k in JOB_KEYS})
  return out


def grid_settings(table: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """max_queued and max_retries of a [slurm] table, with their defaults."""
  return dict(GRID_DEFAULTS, **{k: v for k, v in (table or {}).items() if k in GRID_KEYS})


def memory_bytes(value: str) -> int:
  """Bytes of a memory size as sbatch --mem writes it ("480G", "4000M", "4000": megabytes)."""
  text = str(value).strip().upper()
  unit = text[-1] if text[-1] in "KMGT" else "M"
  number = int(text[:-1] if text[-1] in "KMGT" else text)
  return number << {"K": 10, "M": 20, "G": 30, "T": 40}[unit]


def runtime_flags(settings: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
  """The flags a cell's job adds to its steps, by step: a job of several tasks trains on all of
  them (--strategy=multi_worker, its cluster from SLURM's environment); the rest runs on task 0."""
  return {"pretext": {"strategy": "multi_worker"}} if num_tasks(settings) > 1 else {}


def num_tasks(settings: Mapping[str, Any]) -> int:
  """Tasks of a cell's job: nodes x tasks_per_node (more than one: multi-worker training)."""
  return int(settings.get("nodes", 1)) * int(settings.get("tasks_per_node", 1))
