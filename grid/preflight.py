"""Every step of the cells to run, checked before the first starts (or is submitted): what each
step's train_and_eval.py would check before its work (flags, names, the data and its splits,
classes, the workdir), all in one process (train_and_eval.py --check_steps), so that a grid
fails with one line per bad step instead of cell after cell, or job after job.

An evaluation of a cell's own export is checked without the export, which its pretext step
writes. A cell whose pretext settings changed is checked as the fresh run it becomes (its old
outputs are moved aside when it starts: grid/state.set_aside)."""

import json
import os
import subprocess
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence

from core import files
from core.options import flags_to_args
from grid import state as state_lib
from grid.cells import Cell
from grid.common import GridError, REPO_ROOT


def entries(cells: Sequence[Cell], root: str) -> List[dict]:
  """The commands to check: every step of the cells that are not done."""
  out = []
  for cell in cells:
    workdir = os.path.join(os.path.abspath(root), cell.name)
    if state_lib.cell_done(cell, workdir):
      continue
    state = files.read_json(os.path.join(workdir, files.CELL_FILE)) or {}
    restart = "pretext" in state_lib.changed_steps(cell, state)
    for step, flags in cell.steps(workdir):
      out.append(dict(name=f"{cell.name}, step {step}", args=flags_to_args(flags),
                      export_pending=step != "pretext" and cell.pretext_flags is not None,
                      restart=restart))
  return out


def check(cells: Sequence[Cell], root: str, command: Sequence[str],
          env: Optional[Mapping[str, str]] = None, timeout_s: float = 1800) -> List[str]:
  """The problems of the cells' steps, one line per distinct problem, naming the steps that
  have it ('<error> (<cell>, step <step>; ...)'); [] when every step would start. `command`:
  the steps' program (a Python and train_and_eval.py)."""
  todo = entries(cells, root)
  if not todo:
    return []
  with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="grid_check_",
                                   delete=False) as f:
    json.dump(todo, f)
    path = f.name
  try:
    proc = subprocess.run(list(command) + [f"--check_steps={path}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout_s,
                          env=dict(os.environ if env is None else env))
  finally:
    os.remove(path)
  lines = proc.stdout.strip().splitlines()
  try:
    errors = json.loads(lines[-1])["errors"]
  except (IndexError, ValueError, KeyError, TypeError):
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
    raise GridError(f"the check of the grid's steps failed (exit {proc.returncode}):\n"
                    f"{tail}") from None
  steps: Dict[str, List[str]] = {}
  for e in errors:
    steps.setdefault(e["error"], []).append(e["name"])
  return [f"{error} ({'; '.join(names[:3])}" +
          (f"; and {len(names) - 3} more step(s)" if len(names) > 3 else "") + ")"
          for error, names in steps.items()]
