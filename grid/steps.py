"""Running a cell's steps (pretext training + export, then each evaluation) as subprocesses of
train_and_eval.py, each step's output appended to <cell>/log.txt and its record kept in
<cell>/cell.json. The local executor runs cells with it on this machine; a SLURM job runs its
cell with it on a node.

<cell>/cell.json, the cell's record (the grid's state of it, read by grid/state.py and the report):

  {"name", "kind": "pretext" | "random_init" | "supervised", "method", "architecture", "mode",
   "width", "origin": the grid file's entry it came from, "axes": {option: value},
   "pretext_flags": {option: value} of its pretext step, "evaluations": {name: {option: value}},
   "slurm": its SLURM settings, "baseline": the random-init cell it is compared with,
   "grid": {"name", "file"},
   "steps": {"pretext" | "eval:<name>": {"fingerprint": what identifies the step's settings,
             "done", "started", "finished", "seconds", "exit_code", "cpu_s" (local runs),
             and under SLURM the job's id}},
   "wall_s": the seconds of its steps, once all are done}
"""

import os
import re
import resource
import shlex
import subprocess
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from core import files
from core.files import CELL_FILE, LOG_FILE, RESULTS_FILE
from core.options import flags_to_args
from grid.cells import Cell
from grid.common import REPO_ROOT, now
from grid.state import cell_done, describe_change, set_aside, step_done

# on_step(cell, step): a step starts; on_line(cell, step, line): a line it printed.
StepFn = Callable[[Cell, str], None]
LineFn = Callable[[Cell, str, str], None]


def error_line(lines: Sequence[str]) -> str:
  """The most telling line of a failed step's output: `error: ...`, or a traceback's last line."""
  for line in reversed(lines):
    if line.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
      return line.strip()
  for line in reversed(lines):
    if line.strip():
      return line.strip()
  return "(no output)"


# How long a step may take to stop after SIGTERM (a training step saves a checkpoint of the
# step it is at: core/interrupts.py) before it is killed.
STOP_WAIT_S = 60


def stop(proc: subprocess.Popen) -> None:
  """Stops a step's process: SIGTERM, then SIGKILL after STOP_WAIT_S."""
  if proc.poll() is not None:
    return
  proc.terminate()
  try:
    proc.wait(timeout=STOP_WAIT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def _children_cpu_s() -> float:
  """CPU seconds (user + system) of the finished child processes so far."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


class StepRunner:
  """Runs the steps of cells as subprocesses of `command` (this Python and train_and_eval.py),
  from one thread or several; `stop_all` stops every running step (an interrupt).

  `env`: the steps' environment. `on_step` is told of every step that starts, `on_line` sees
  every output line. `record_cpu`: write each step's CPU time into cell.json (only right when
  steps run one at a time).
  """

  def __init__(self, command: Sequence[str], env: Mapping[str, str],
               on_step: Optional[StepFn] = None, on_line: Optional[LineFn] = None,
               tail_lines: int = 30, record_cpu: bool = True):
    self.command = list(command)
    self.env = dict(env, PYTHONUNBUFFERED="1")
    self.on_step, self.on_line = on_step, on_line
    self.tail_lines = tail_lines
    self.record_cpu = record_cpu
    self._procs: set = set()
    self._lock = threading.Lock()
    self.stopping = False

  def stop_all(self) -> None:
    """Stops every running step; the threads running them raise KeyboardInterrupt."""
    with self._lock:
      self.stopping = True
      procs = list(self._procs)
    for proc in procs:  # All at once: each saves the step it is at meanwhile.
      if proc.poll() is None:
        proc.terminate()
    for proc in procs:
      stop(proc)

  def run_cell(self, cell: Cell, workdir: str, grid_info: Mapping[str, Any],
               runtime_flags: Optional[Mapping[str, Mapping[str, Any]]] = None,
               record: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Runs the steps of `cell` that are not done yet, in `workdir`; returns the outcome:
    {status: done | failed, wall_s, and for a failure: failed_step, exit_code, error, log_tail}.

    `runtime_flags`: step -> flags that change how, not what, it runs (e.g. the strategy of a
    multi-worker job); they are not part of the fingerprints. `record`: fields added to each
    step's record in cell.json (e.g. the SLURM job id).
    """
    os.makedirs(workdir, exist_ok=True)
    state_path = os.path.join(workdir, CELL_FILE)
    state = files.read_json(state_path) or {}
    fingerprints = cell.fingerprints()
    # What was made with other settings is moved aside, never resumed or shown as this cell's:
    # everything where the pretext settings changed (it retrains from step 0), else the
    # changed evaluations' folders.
    changed, moved = set_aside(cell, workdir, state)
    if changed:
      self._log(workdir, f"=== {now()} {describe_change(cell, state)}: the outputs of "
                f"{', '.join(changed)} moved to {moved} ===")
      if "pretext" in changed:
        state = {}
      else:
        for step in changed:
          state["steps"].pop(step, None)
    state.update(cell.to_dict(), grid=dict(grid_info))
    steps_state = state.setdefault("steps", {})
    cell_start = time.time()
    for step, flags in cell.steps(workdir):
      if step_done(cell, workdir, step, state):
        self._log(workdir, f"=== {now()} step {step}: done earlier with the same settings; "
                  "skipped ===")
        continue
      entry = dict(fingerprint=fingerprints[step], done=False, started=now(), **(record or {}))
      steps_state[step] = entry
      files.write_json_atomic(state_path, state, default=str)
      argv = self.command + flags_to_args(dict(flags, **(runtime_flags or {}).get(step, {})))
      cpu_before = _children_cpu_s()
      code, tail, seconds = self.run_step(cell, step, argv, os.path.join(workdir, LOG_FILE))
      entry.update(done=code == 0, seconds=round(seconds, 1), exit_code=code, finished=now())
      if self.record_cpu:
        entry["cpu_s"] = round(_children_cpu_s() - cpu_before, 1)
      files.write_json_atomic(state_path, state, default=str)
      if code != 0:
        error = error_line(tail)
        if code < 0:
          error = f"killed by signal {-code}; {error}"
        return dict(status="failed", failed_step=step, exit_code=code, error=error,
                    log_tail=tail[-self.tail_lines:], wall_s=round(time.time() - cell_start, 1))
    if not cell_done(cell, workdir):
      return dict(status="failed", failed_step=cell.steps(workdir)[-1][0], exit_code=0,
                  error=f"the steps succeeded but {RESULTS_FILE} (or the export) is missing or "
                  "does not match the settings", log_tail=[],
                  wall_s=round(time.time() - cell_start, 1))
    wall = sum(s.get("seconds", 0.0) for s in steps_state.values())
    state["wall_s"] = round(wall, 1)
    files.write_json_atomic(state_path, state, default=str)
    return dict(status="done", wall_s=round(time.time() - cell_start, 1),
                total_step_s=round(wall, 1))

  def _log(self, workdir: str, line: str):
    with open(os.path.join(workdir, LOG_FILE), "a") as f:
      f.write(line + "\n")

  def run_step(self, cell: Cell, step: str, argv: List[str], log_path: str
               ) -> Tuple[int, List[str], float]:
    """Runs one step, its output appended to `log_path`; returns (exit code, last lines,
    seconds). Raises KeyboardInterrupt when stopped by stop_all (the step's process is gone)."""
    if self.on_step is not None:
      self.on_step(cell, step)
    tail: List[str] = []
    start = time.time()
    with open(log_path, "a") as log:
      log.write(f"=== {now()} step {step}: {shlex.join(argv)}\n")
      log.flush()
      with self._lock:
        if self.stopping:
          raise KeyboardInterrupt
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, cwd=REPO_ROOT, env=self.env,
                                errors="replace")
        self._procs.add(proc)
      try:
        for line in proc.stdout:
          log.write(line)
          log.flush()
          line = line.rstrip("\n")
          tail.append(line)
          if len(tail) > 200:
            del tail[:100]
          if self.on_line is not None:
            self.on_line(cell, step, line)
        code = proc.wait()
        if self.stopping:  # Another thread was interrupted and stopped this step.
          raise KeyboardInterrupt
      except BaseException:
        stop(proc)
        try:  # What it printed while it stopped: how far it got, what it saved.
          log.write(proc.stdout.read())
        except (OSError, ValueError):
          pass
        log.write(f"=== {now()} interrupted ===\n")
        raise
      finally:
        with self._lock:
          self._procs.discard(proc)
      seconds = time.time() - start
      log.write(f"=== {now()} step {step}: exit {code} after {seconds:.1f} s ===\n")
    return code, tail, seconds
