"""The run of a grid: cells already done are skipped, the rest go to an executor, and every
cell's state is kept in <root>/grid_status.json.

An executor (grid/local.py, grid/slurm.py) is any object with
  name: str                       the value of benchmark.py --executor
  slots: int                      cells it runs at once (for the ETA)
  header(todo) -> str             what the first line adds, e.g. ", 2 at a time"
  attach(root) -> context         held for the whole run (SLURM: one runner per root)
  run(todo, runner) -> bool       runs the cells, telling the runner of each one's start
                                  (runner.cell_started) and end (runner.cell_ended); False
                                  when it returns before they end (a detached SLURM run)
"""

import os
import shlex
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from core import files
from core.durations import format_duration
from core.files import CELL_FILE, RESULTS_FILE
from core.options import flags_to_args
from grid import state as state_lib
from grid import status as status_lib
from grid.cells import Cell
from grid.common import now
from grid.progress import Progress


class GridRunner:
  """Runs the cells of one grid root with an executor; records their state.

  `fail_fast`: after the first failed cell, start (or submit) no more.
  """

  def __init__(self, root: str, executor, grid_name: str = "", grid_path: str = "",
               print_fn: Callable[[str], None] = print, fail_fast: bool = False):
    self.root = os.path.abspath(root)
    self.executor = executor
    self.grid_name, self.grid_path = grid_name, grid_path
    self.print_fn = print_fn
    self.fail_fast = fail_fast
    self.status = status_lib.StatusFile(self.root, grid_name, grid_path)
    self.progress = Progress()
    self.counts = dict(finished=0, failed=0)
    self.start = time.time()
    self.cells: List[Cell] = []  # Those of the run, done ones too.
    self._positions: Dict[str, str] = {}
    self._total = self._done_before = 0

  @property
  def grid_info(self) -> Dict[str, str]:
    return dict(name=self.grid_name, file=self.grid_path)

  def workdir(self, cell: Cell) -> str:
    return os.path.join(self.root, cell.name)

  def position(self, cell: Cell) -> str:
    """`[i/N]`: the cell's place in this run."""
    return self._positions.get(cell.name, "")

  def should_stop(self) -> bool:
    """Whether no more cells should start: a cell failed and --fail_fast is on."""
    return self.fail_fast and self.counts["failed"] > 0

  def eta(self) -> Optional[float]:
    return self.progress.eta(self.executor.slots)

  def summary(self) -> str:
    """`done d/N, failed f | elapsed 1m02s, ETA 3m04s`."""
    return (f"done {self._done_before + self.counts['finished']}/{self._total}, failed "
            f"{self.counts['failed']} | elapsed {format_duration(time.time() - self.start)}, ETA "
            f"{format_duration(self.eta())}")

  def run(self, cells: Sequence[Cell]) -> Dict[str, Dict[str, Any]]:
    """Runs (or skips) every cell; returns {name: status entry}. Failures do not stop the rest."""
    os.makedirs(self.root, exist_ok=True)
    with self.executor.attach(self.root):
      return self._run(cells)

  def _take_pairing(self, cell: Cell, state: Dict[str, Any]) -> None:
    """A done cell that this grid reuses (run by another grid file in this root, or copied
    from another root) takes this grid's pairing with a random-init baseline (cell.json's
    `baseline`, which the report compares it with): the pairing is the grid's, while the
    settings that cell.json records stay those of the run that made the results."""
    if state and state.get("baseline") != cell.baseline:
      files.write_json_atomic(os.path.join(self.workdir(cell), CELL_FILE),
                              dict(state, baseline=cell.baseline), default=str)

  def _run(self, cells: Sequence[Cell]) -> Dict[str, Dict[str, Any]]:
    self.start = time.time()
    self.cells = list(cells)
    todo = []
    for cell in cells:
      state = files.read_json(os.path.join(self.workdir(cell), CELL_FILE)) or {}
      if state_lib.cell_done(cell, self.workdir(cell)):
        self._take_pairing(cell, state)
        wall = self.status.entry(cell.name).get("wall_s", state.get("wall_s"))
        self.status.set(cell, status="done", reused=True, wall_s=wall)
        self.progress.add_duration(cell, state.get("wall_s"))  # Earlier runs seed the ETA.
      else:
        todo.append(cell)
        self.status.set(cell, status="pending")
    self.status.write()
    self._total, self._done_before = len(cells), len(cells) - len(todo)
    self._positions = {c.name: f"[{self._done_before + i}/{self._total}]"
                       for i, c in enumerate(todo, 1)}
    self.print_fn(f"grid {self.grid_name or ''}: {len(cells)} cell(s) in {self.root}: "
                  f"{self._done_before} already done, {len(todo)} to run"
                  + self.executor.header(todo))
    self.progress.expect(todo)
    if todo and not self.executor.run(todo, self):
      self.status.write()
      return {c.name: self.status.entry(c.name) for c in cells}
    self.status.write()
    finished, failed = self.counts["finished"], self.counts["failed"]
    left = len(todo) - finished - failed
    self.print_fn(f"grid finished in {format_duration(time.time() - self.start)}: "
                  f"{self._done_before + finished}/{self._total} done, {failed} failed"
                  + (f", {left} not run" if left else ""))
    return {c.name: self.status.entry(c.name) for c in cells}

  # Told by the executors.
  def cell_started(self, cell: Cell, at: Optional[float] = None, **fields) -> None:
    """`cell` started running (at `at`, default now); `fields` go into its status entry."""
    self.progress.started(cell, at)
    self.status.set(cell, status="running", started=now(), reused=False, **fields)
    self.status.write()

  def cell_ended(self, cell: Cell, outcome: Dict[str, Any], **fields) -> Dict[str, Any]:
    """`cell` ended with `outcome` (steps.StepRunner.run_cell's, or status cancelled with an
    error); records and prints it."""
    with self.status.lock:
      entry = self.status.set(cell, finished=now(), **outcome, **fields)
      self.status.write()
      done = outcome["status"] == "done"
      self.counts["finished" if done else "failed"] += 1
      self.progress.finished(cell, outcome.get("wall_s") if done else None)
      position = self.position(cell)
      if done:
        self.print_fn(f"{position} {cell.name}: done in {format_duration(outcome.get('wall_s'))}"
                      f"{self._best(cell)}")
      elif outcome["status"] == "cancelled":
        self.print_fn(f"{position} {cell.name}: {outcome['error']}")
      else:
        self.print_fn(f"{position} {cell.name}: FAILED in step {outcome['failed_step']} "
                      f"(exit {outcome['exit_code']}): {outcome['error']}\n"
                      f"    log: {entry['log']}")
        if self.fail_fast:
          self.print_fn("stopping at the first failure (--fail_fast)")
      return entry

  def _best(self, cell: Cell) -> str:
    results = files.read_json(os.path.join(self.workdir(cell), next(iter(cell.evaluations)),
                                           RESULTS_FILE)) or {}
    best = results.get("best_layer") or {}
    if best.get("name") and best.get("top1") is not None:
      return f" (best layer {best['name']}: top-1 {100 * best['top1']:.1f}%)"
    return ""


def describe(cells: Sequence[Cell], root: str, show_commands: bool = False,
             command: Optional[Sequence[str]] = None,
             jobs: Optional[Mapping[str, Mapping[str, str]]] = None) -> str:
  """The --list text: one line per cell (name, kind, state and SLURM job: its state now where
  `jobs`, squeue's, is given), optionally with its commands."""
  status = status_lib.read(root).get("cells", {})
  width = max([len(c.name) for c in cells] + [4])
  lines = [f"{'cell'.ljust(width)}  {'kind'.ljust(11)}  state"]
  for c in cells:
    workdir = os.path.join(os.path.abspath(root), c.name)
    entry = status.get(c.name, {})
    if state_lib.cell_done(c, workdir):
      state = "done"
    else:
      state = entry.get("status", "pending")
      change = state_lib.describe_change(c, files.read_json(os.path.join(workdir, CELL_FILE))
                                         or {})
      if state == "failed":
        state += f" ({entry.get('error', '')[:80]})"
      if change:  # Run with other settings: what was made is moved aside when it runs again.
        state = change if state in ("done", "pending") else f"{state}; {change}"
      elif state == "done":  # Its files are gone or do not match.
        state = "pending (its results are missing or not of its export)"
    if entry.get("job_id") and state != "done":
      job_state = (jobs or {}).get(entry["job_id"], {}).get("state", entry.get("job_state"))
      state += f" (SLURM job {entry['job_id']}, {job_state or '?'})"
    lines.append(f"{c.name.ljust(width)}  {c.kind.ljust(11)}  {state}")
    if show_commands:
      prefix = list(command or ["python", "train_and_eval.py"])
      for step, flags in c.steps(workdir):
        lines.append(f"    {step}: {shlex.join(prefix + flags_to_args(flags))}")
  return "\n".join(lines)
