"""The local executor: every cell's steps as subprocesses of this machine, `jobs` cells at once."""

import contextlib
import os
import sys
import threading
import time
from typing import Mapping, Optional, Sequence

from core.durations import format_duration
from grid.cells import Cell
from grid.progress import is_progress, shown
from grid.steps import StepRunner


class LocalExecutor:
  """Runs cells on this machine, each step a subprocess of `command`.

  `jobs`: how many cells run at once. With more than one, each step's TensorFlow gets
  cpu_count // jobs threads (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, unless `env`
  sets them): on a small CPU machine two single-threaded cells do more work per second than one
  cell on two threads, and their start-up, tracing and export overlap. `stream_logs` echoes
  every output line; otherwise a progress line every `progress_every_s` (rewritten in place on
  a terminal).
  """

  name = "local"

  def __init__(self, command: Sequence[str], jobs: int = 1,
               env: Optional[Mapping[str, str]] = None, stream_logs: bool = False,
               progress_every_s: float = 30, tty: Optional[bool] = None, tail_lines: int = 30):
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
      raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    self.command = list(command)
    self.jobs = jobs
    self.env = dict(os.environ if env is None else env)
    if jobs > 1:
      threads = str(max(1, (os.cpu_count() or 1) // jobs))
      for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        self.env.setdefault(name, threads)
    self.stream_logs = stream_logs
    self.progress_every_s = progress_every_s
    # A status line rewritten in place only makes sense for one cell at a time.
    self.tty = (sys.stdout.isatty() if tty is None else tty) and jobs == 1
    self.tail_lines = tail_lines
    self._runner = None
    self._last_progress = 0.0

  @property
  def slots(self) -> int:
    return self.jobs

  def attach(self, root: str):
    """Nothing to hold: runners of disjoint --cells subsets may share a root."""
    del root
    return contextlib.nullcontext()

  def header(self, todo: Sequence[Cell]) -> str:
    jobs = min(self.jobs, len(todo))
    return f", {jobs} at a time" if jobs > 1 else ""

  # What the steps print.
  def _clear_line(self):
    if self.tty and not self.stream_logs:
      sys.stdout.write("\r\033[K")
      sys.stdout.flush()

  def _on_step(self, cell: Cell, step: str):
    self._clear_line()
    if step == "pretext":
      label = "pretext training + export"
    else:
      name = step.split(":", 1)[1]
      task = cell.evaluations[name].get("task")
      label = f"{'fine-tuning' if task == 'fine_tune' else 'per-layer evaluation'} {name}"
    self._runner.print_fn(f"{self._runner.position(cell)} {cell.name}: {label}")

  def _on_line(self, cell: Cell, step: str, line: str):
    runner = self._runner
    if self.stream_logs:
      runner.print_fn(f"  {cell.name} | {line}")
    elif is_progress(line) and (self.tty or
                                time.time() - self._last_progress >= self.progress_every_s):
      self._last_progress = time.time()
      text = (f"  {cell.name} {step} | {shown(line)} | grid elapsed "
              f"{format_duration(time.time() - runner.start)}, ETA {format_duration(runner.eta())}")
      if self.tty:
        sys.stdout.write("\r\033[K" + text[:200])
        sys.stdout.flush()
      else:
        runner.print_fn(text)

  def run(self, cells: Sequence[Cell], runner) -> bool:
    """Runs every cell, `jobs` at a time. An interrupt stops the running steps, records their
    cells as interrupted and is raised again."""
    self._runner = runner
    steps = StepRunner(self.command, self.env, on_step=self._on_step, on_line=self._on_line,
                       tail_lines=self.tail_lines, record_cpu=self.jobs == 1)
    queue = list(cells)
    lock = threading.Lock()

    def run_next() -> bool:
      """Runs the next cell of the queue; False when there is none or the grid must stop."""
      with lock:
        if not queue or steps.stopping or runner.should_stop():
          return False
        cell = queue.pop(0)
        runner.print_fn(f"{runner.position(cell)} {cell.name}: starting | {runner.summary()}")
      runner.cell_started(cell)
      try:
        outcome = steps.run_cell(cell, runner.workdir(cell), runner.grid_info)
      except KeyboardInterrupt:
        runner.status.set(cell, status="interrupted", error="interrupted by the user")
        runner.status.write()
        runner.print_fn(f"{runner.position(cell)} {cell.name}: interrupted; run the same "
                        "command again to resume")
        raise
      finally:
        self._clear_line()
      runner.cell_ended(cell, outcome)
      return True

    jobs = min(self.jobs, len(cells))
    if jobs == 1:
      while run_next():
        pass
      return True
    # `jobs` threads take cells from the queue. An interrupt (in the main thread) stops every
    # running step; each thread then records its cell as interrupted. Completion is signalled
    # with events, not Thread.join: a KeyboardInterrupt that lands inside join() can leave the
    # thread looking finished while it still records its cell.
    finished = [threading.Event() for _ in range(jobs)]

    def worker(done: threading.Event):
      try:
        while run_next():
          pass
      except KeyboardInterrupt:
        pass  # Recorded by run_next; the main thread re-raises.
      finally:
        done.set()

    for i, done in enumerate(finished):
      threading.Thread(target=worker, args=(done,), name=f"grid-job-{i}", daemon=True).start()
    try:
      while not all(done.is_set() for done in finished):
        time.sleep(0.2)
    except KeyboardInterrupt:
      steps.stop_all()
      for done in finished:
        done.wait()
      raise
    return True
