"""Every step of the cells to run, checked before the first starts (or is submitted): what each
step's train_and_eval.py would check before its work (flags, names, the data and its splits,
classes, the workdir), all in one process (train_and_eval.py --check_steps), so that a grid
fails with one line per bad step instead of cell after cell, or job after job. The same process
estimates what each step will hold and write on the devices it gets (grid/plan.py).

An evaluation of a cell's own export is checked without the export, which its pretext step
writes. A cell whose pretext settings changed is checked as the fresh run it becomes (its old
outputs are moved aside when it starts: grid/state.set_aside)."""

import json
import os
import subprocess
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from core import files
from core.options import flags_to_args
from grid import plan as plan_lib
from grid import state as state_lib
from grid.cells import Cell
from grid.common import GridError, REPO_ROOT


def entries(cells: Sequence[Cell], root: str, budget: Optional[plan_lib.Budget] = None
            ) -> Tuple[List[dict], Dict[str, plan_lib.Placement]]:
  """(the commands to check: every step of the cells that are not done, with the devices and
  processes `budget` gives it; those placements by entry name)."""
  out, placements = [], {}
  budget = budget or plan_lib.LocalBudget()
  for cell in cells:
    workdir = os.path.join(os.path.abspath(root), cell.name)
    if state_lib.cell_done(cell, workdir):
      continue
    state = files.read_json(os.path.join(workdir, files.CELL_FILE)) or {}
    restart = "pretext" in state_lib.changed_steps(cell, state)
    source = None
    for step, flags in cell.steps(workdir):
      name = f"{cell.name}, step {step}"
      runtime = budget.runtime_flags(cell, step)
      placement = placements[name] = budget.placement(cell, step, dict(flags, **runtime))
      args = flags_to_args(flags)
      out.append(dict(name=name, args=args, restart=restart,
                      export_pending=step != "pretext" and cell.pretext_flags is not None,
                      replicas=placement.replicas, processes=placement.processes,
                      runtime=runtime, source_args=source))
      if step == "pretext":
        source = args
  return out, placements


def check(cells: Sequence[Cell], root: str, command: Sequence[str],
          env: Optional[Mapping[str, str]] = None, timeout_s: float = 3600,
          budget: Optional[plan_lib.Budget] = None
          ) -> Tuple[List[str], Dict[str, dict], Dict[str, plan_lib.Placement]]:
  """(the problems of the cells' steps, one line per distinct problem, naming the steps that
  have it ('<error> (<cell>, step <step>; ...)'), [] when every step would start; the estimate of
  every step that passed, by entry name; the placements, by entry name). `command`: the steps'
  program (a Python and train_and_eval.py)."""
  todo, placements = entries(cells, root, budget)
  if not todo:
    return [], {}, placements
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
    outcome = json.loads(lines[-1])
    errors, plans = outcome["errors"], outcome["plans"]
  except (IndexError, ValueError, KeyError, TypeError):
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-20:])
    raise GridError(f"the check of the grid's steps failed (exit {proc.returncode}):\n"
                    f"{tail}") from None
  steps: Dict[str, List[str]] = {}
  for e in errors:
    steps.setdefault(e["error"], []).append(e["name"])
  problems = [f"{error} ({'; '.join(names[:3])}" +
              (f"; and {len(names) - 3} more step(s)" if len(names) > 3 else "") + ")"
              for error, names in steps.items()]
  return problems, {p.pop("name"): p for p in plans}, placements
