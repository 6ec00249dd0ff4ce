"""The SLURM executor: every cell a SLURM job, submitted with submitit, watched with squeue.

A cell's job runs all of its steps (grid/slurm_job.py): pretext training + export, then its
evaluations, in one allocation. Its files stay in the cell folder: submitit's script, pickles
and per-task logs, and the job's own record, all in <cell>/slurm/. The grid root's files stay
the only truth about what is done; <root>/grid_status.json adds each cell's job id, its SLURM
state and every attempt.

While attached, the runner polls squeue: a job that leaves the queue with its cell done is
done; one that ended for its own reasons (a step's Python error) is failed; one that ended
without its results (time limit, preemption, node failure, scancel) is resubmitted, up to
max_retries times, and resumes from the cell's checkpoints. Ended jobs are read from the
records the jobs write, so no accounting database (sacct) is needed.
"""

import contextlib
import fcntl
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import files
from core.files import CELL_FILE
from grid import slurm_cluster
from grid import slurm_job
from grid import slurm_settings
from grid.cells import Cell
from grid.common import GridError, REPO_ROOT, SLURM_DIR, now
from grid.slurm_cluster import ACTIVE_STATES, RUNNING_STATES, ClusterError
from grid.state import cell_done, step_done

COMMENT = "ssl_bench grid cell {cell} of {root}"


class SlurmExecutor:
  """Runs each cell as a SLURM job; see the module docstring.

  `command`: the steps' program prefix (a Python and train_and_eval.py); `settings`: the grid's
  max_queued and max_retries; `poll_s`: seconds between squeue calls; `detach`: submit, then
  return without waiting; `progress_every_s`: seconds between the summary lines.
  """

  name = "slurm"

  def __init__(self, command: Sequence[str], settings: Mapping[str, Any], poll_s: float = 15,
               detach: bool = False, progress_every_s: float = 60,
               python: str = sys.executable):
    self.command = list(command)
    self.max_queued = int(settings.get("max_queued", slurm_settings.GRID_DEFAULTS["max_queued"]))
    self.max_retries = int(settings.get("max_retries",
                                        slurm_settings.GRID_DEFAULTS["max_retries"]))
    self.poll_s, self.detach, self.progress_every_s = poll_s, detach, progress_every_s
    self.python = python
    self._partitions: Optional[Dict[str, Dict[str, Any]]] = None
    self._running = 0

  @property
  def slots(self) -> int:
    return max(1, self._running)

  def header(self, todo: Sequence[Cell]) -> str:
    return f", as SLURM jobs (at most {self.max_queued} queued at once)"

  # Settings.
  def _partition(self, cell: Cell):
    """(name, limits) of the partition a cell's job goes to (None, {}: the cluster's default,
    before check() has read the partitions)."""
    parts = self._partitions or {}
    name = cell.slurm.get("partition") or next((n for n, p in parts.items() if p["default"]),
                                               None)
    return name, parts.get(name, {})

  def parameters(self, cell: Cell) -> Dict[str, Any]:
    """submitit's SlurmExecutor parameters of a cell's job: its [slurm] settings, the time
    limit in minutes (without one, its partition's default or maximum)."""
    s = cell.slurm
    _, limits = self._partition(cell)
    params = dict(job_name=cell.name, nodes=1, ntasks_per_node=1)
    params.update({option: s[key] for key, option in slurm_settings.SBATCH_OPTIONS.items()
                   if key in s})
    minutes = (slurm_settings.parse_time(s["time"]) if "time" in s else
               limits.get("default_time") or limits.get("max_time"))
    params.pop("time", None)
    if minutes is not None:
      params["time"] = minutes
    if s.get("extra"):
      params["additional_parameters"] = dict(s["extra"])
    return params

  def check(self, cells: Sequence[Cell]) -> None:
    """Fails with one line naming the setting when the cluster cannot run the cells' jobs as
    asked: no SLURM commands, an unknown partition, a time limit over the partition's, or a
    request that sbatch --test-only rejects. Submits nothing."""
    _require_commands()
    try:
      self._partitions = slurm_cluster.partitions()
    except ClusterError as e:
      raise GridError(f"--executor=slurm: the cluster does not answer ({e})") from None
    checked = set()
    for cell in cells:
      where = f"[slurm] of cell {cell.name}"
      partition = cell.slurm.get("partition")
      if partition is not None and partition not in self._partitions:
        raise GridError(f"{where}: partition = {partition!r} is not a partition of this "
                        f"cluster; partitions: {', '.join(self._partitions)}")
      name, limits = self._partition(cell)
      params = self.parameters(cell)
      if "time" not in params:
        raise GridError(f"{where}: no time limit, and partition {name} has none; set time = "
                        "\"D-HH:MM:SS\"")
      if limits.get("max_time") is not None and params["time"] > limits["max_time"]:
        raise GridError(f"{where}: time = {cell.slurm.get('time', params['time'])!r} "
                        f"({slurm_settings.format_time(params['time'])}) is over the time "
                        f"limit of partition {name}, "
                        f"{slurm_settings.format_time(limits['max_time'])}")
      key = repr(sorted((k, v) for k, v in params.items() if k != "job_name"))
      if key in checked:
        continue
      checked.add(key)
      why = slurm_cluster.test_only(params)  # The scheduler's own check of the request.
      if why:
        asked = ", ".join(f"{k} = {v!r}" for k, v in cell.slurm.items() if k != "setup")
        raise GridError(f"{where}: sbatch rejects the request ({asked or 'the defaults'}): "
                        f"{why}")

  # Running.
  def run(self, cells: Sequence[Cell], runner) -> bool:
    """Submits the cells' jobs (at most max_queued at once), then, unless detached, watches
    them until every cell is done or failed, resubmitting jobs that ended without results;
    False when detached. Ctrl-C stops the watching, not the jobs."""
    if self._partitions is None:
      self.check(cells)
    jobs = slurm_cluster.queue()
    self._close_reused([c for c in runner.cells if c not in cells], runner, jobs)
    waiting: List[Tuple[Cell, bool]] = []  # (cell, whether a resubmission)
    tracked: Dict[str, Cell] = {}  # job id -> cell
    last_summary = time.time()
    try:
      for cell in cells:
        job_id = self._open_job(cell, runner, jobs)
        if job_id:
          tracked[job_id] = cell
        else:
          waiting.append((cell, False))
      while True:
        while waiting and len(tracked) < self.max_queued and not runner.should_stop():
          cell, retry = waiting.pop(0)
          job_id = self._submit(cell, runner, retry)
          if job_id:
            tracked[job_id] = cell
        runner.status.write()
        if self.detach:
          runner.print_fn(self._detached_text(tracked, waiting))
          return False
        if not tracked:
          return True
        time.sleep(self.poll_s)
        try:
          jobs = slurm_cluster.queue()
        except (ClusterError, subprocess.TimeoutExpired) as e:  # A busy controller: next time.
          runner.print_fn(f"  slurm: squeue did not answer ({e}); asking again in "
                          f"{self.poll_s:g} s")
          continue
        self._running = sum(jobs.get(j, {}).get("state") in RUNNING_STATES for j in tracked)
        for job_id, cell in list(tracked.items()):
          info = jobs.get(job_id)
          if info and info["state"] in ACTIVE_STATES:
            self._update(cell, job_id, info, runner)
            continue
          del tracked[job_id]
          if self._ended(cell, job_id, info, runner):
            waiting.insert(0, (cell, True))
        runner.status.write()
        if tracked and time.time() - last_summary >= self.progress_every_s:
          last_summary = time.time()
          runner.print_fn(self._summary(tracked, jobs, runner))
    except KeyboardInterrupt:
      runner.status.write()
      ids = ", ".join(sorted(tracked, key=int)) or "none"
      runner.print_fn(f"interrupted: the SLURM jobs keep running (jobs {ids}); the same "
                      "command attaches to them again, --cancel cancels them")
      raise

  def attach(self, root: str):
    """Held for the whole run: one runner at a time submits and watches a root's jobs."""
    return _attached(root)

  def _attempts(self, cell: Cell, runner) -> List[Dict[str, Any]]:
    return [dict(a) for a in runner.status.entry(cell.name).get("attempts", [])]

  def _open_job(self, cell: Cell, runner, jobs: Mapping[str, Mapping[str, str]]
                ) -> Optional[str]:
    """The job of the cell's current attempt, if it has one: the status file's, or, where the
    status file lost it, a queued or running job of this cell and root (its comment)."""
    job_id = runner.status.entry(cell.name).get("job_id")
    if not job_id:
      comment = COMMENT.format(cell=cell.name, root=runner.root)
      active = [j for j, info in jobs.items() if info["comment"] == comment and
                info["state"] in ACTIVE_STATES]
      if not active:
        return None
      job_id = max(active, key=int)
      attempts = self._attempts(cell, runner) + [self._attempt(cell, runner, job_id)]
      runner.status.set(cell, executor=self.name, job_id=job_id, job_state="PENDING",
                        attempts=attempts)
    info = jobs.get(job_id)
    runner.print_fn(f"{runner.position(cell)} {cell.name}: watching its SLURM job {job_id} "
                    f"({info['state'] if info else 'no longer in the queue'})")
    if info and info["state"] in ACTIVE_STATES:
      self._update(cell, job_id, info, runner)  # Its state now.
    return job_id

  def _attempt(self, cell: Cell, runner, job_id: str) -> Dict[str, Any]:
    folder = os.path.join(runner.workdir(cell), SLURM_DIR)
    return dict(job_id=job_id, submitted=now(), state="PENDING",
                log=os.path.join(folder, f"{job_id}_0_log.out"),
                record=slurm_job.record_path(runner.workdir(cell), job_id))

  def _submit(self, cell: Cell, runner, retry: bool) -> Optional[str]:
    """Submits the cell's job, as a new series of attempts or (`retry`) the next attempt of
    one that ended without its results; returns its id (None: sbatch refused, the cell
    failed)."""
    import submitit  # pylint: disable=g-import-not-at-top
    workdir = runner.workdir(cell)
    attempts = self._attempts(cell, runner) if retry else []
    executor = submitit.SlurmExecutor(folder=os.path.join(workdir, SLURM_DIR),
                                      max_num_timeout=0, python=shlex.quote(self.python))
    root = shlex.quote(REPO_ROOT)
    executor.update_parameters(
        **self.parameters(cell), comment=COMMENT.format(cell=cell.name, root=runner.root),
        setup=[f"cd {root}", f"export PYTHONPATH={root}${{PYTHONPATH:+:$PYTHONPATH}}",
               *cell.slurm.get("setup", [])])
    try:
      job = executor.submit(slurm_job.run, cell, runner.root, self.command, runner.grid_info)
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError,
            OSError) as e:
      lines = str(e).strip().splitlines() or ["(no message)"]
      runner.cell_ended(cell, dict(status="failed", failed_step="submit", exit_code=None,
                                   error=f"sbatch failed: {lines[-1]}", log_tail=lines[-30:],
                                   wall_s=0.0), job_id=None, job_state=None, attempts=attempts)
      return None
    attempts.append(self._attempt(cell, runner, job.job_id))
    runner.status.set(cell, status="pending", executor=self.name, job_id=job.job_id,
                      job_state="PENDING", attempts=attempts)
    again = f" (attempt {len(attempts)} of {self.max_retries + 1})" if len(attempts) > 1 else ""
    runner.print_fn(f"{runner.position(cell)} {cell.name}: submitted as SLURM job "
                    f"{job.job_id}{again}")
    return job.job_id

  def _update(self, cell: Cell, job_id: str, info: Mapping[str, str], runner) -> None:
    """A job still in the queue: its state into the status file, a line when it starts."""
    entry = runner.status.entry(cell.name)
    running = info["state"] in RUNNING_STATES
    if info["state"] == entry.get("job_state") and (entry.get("status") == "running") == running:
      return
    attempts = self._attempts(cell, runner)
    current = attempts[-1] if attempts and attempts[-1]["job_id"] == job_id else {}
    current["state"] = info["state"]
    if running and entry.get("status") != "running":
      current.setdefault("started", now())
      runner.cell_started(cell, job_state=info["state"], attempts=attempts)
      runner.print_fn(f"{runner.position(cell)} {cell.name}: running (SLURM job {job_id} on "
                      f"{info['where']}) | {runner.summary()}")
    else:
      runner.status.set(cell, job_state=info["state"], attempts=attempts,
                        status="running" if running else "pending")

  def _close(self, cell: Cell, job_id: str, info: Optional[Mapping[str, str]], runner):
    """(status fields, record) of a job that left the queue: its last SLURM state and its
    outcome (from the job's record) in its attempt; the cell has no current job any more."""
    state = info["state"] if info and info["state"] not in ACTIVE_STATES else \
        "ENDED (no longer known to squeue)"
    record = files.read_json(slurm_job.record_path(runner.workdir(cell), job_id)) or {}
    attempts = self._attempts(cell, runner)
    if attempts and attempts[-1]["job_id"] == job_id:
      # The job's own word on how it ended: done, failed, interrupted; "killed" where it was
      # stopped before it could say, "none" where it left no record (it never started).
      outcome = {"running": "killed"}.get(record.get("status"), record.get("status", "none"))
      attempts[-1].update(state=state, ended=attempts[-1].get("ended") or now(),
                          outcome=outcome)
    return dict(job_id=None, job_state=state, attempts=attempts), record

  def _close_reused(self, cells: Sequence[Cell], runner, jobs) -> None:
    """Cells the runner found done whose job the status file still names (they ended while
    no runner was attached): their attempts get how the jobs ended."""
    for cell in cells:
      entry = runner.status.entry(cell.name)
      if entry.get("status") == "done" and entry.get("job_id"):
        fields, _ = self._close(cell, entry["job_id"], jobs.get(entry["job_id"]), runner)
        runner.status.set(cell, **fields)

  def _ended(self, cell: Cell, job_id: str, info: Optional[Mapping[str, str]], runner) -> bool:
    """A job that left the queue: records how it ended; True to resubmit it."""
    workdir = runner.workdir(cell)
    fields, record = self._close(cell, job_id, info, runner)
    state = fields["job_state"]
    if cell_done(cell, workdir):
      wall = record.get("wall_s") or (files.read_json(os.path.join(workdir, CELL_FILE)) or
                                      {}).get("wall_s")
      runner.cell_ended(cell, dict(status="done", wall_s=wall,
                                   total_step_s=record.get("total_step_s")), **fields)
      return False
    if os.path.exists(_cancel_marker(workdir, job_id)):
      runner.cell_ended(cell, dict(status="cancelled", error=f"SLURM job {job_id} cancelled "
                                   "with --cancel"), **fields)
      return False
    if record.get("status") == "failed":  # A step failed for its own reasons.
      outcome = {k: record.get(k) for k in ("status", "failed_step", "exit_code", "error",
                                            "log_tail", "wall_s")}
      runner.cell_ended(cell, outcome, **fields)
      return False
    why = state + (f"; {record['error'][:100]}" if record.get("error") else "")
    attempts = fields["attempts"]
    if len(attempts) <= self.max_retries:
      runner.status.set(cell, status="pending", **fields)
      runner.print_fn(f"{runner.position(cell)} {cell.name}: SLURM job {job_id} ended without "
                      f"its results ({why}); resubmitting, it resumes from its checkpoints")
      return True
    tail = _tail(os.path.join(workdir, SLURM_DIR, f"{job_id}_0_log.err"))
    runner.cell_ended(cell, dict(
        status="failed", failed_step=record.get("failed_step") or _next_step(cell, workdir),
        exit_code=record.get("exit_code"), log_tail=tail, wall_s=record.get("wall_s"),
        error=f"its SLURM job ended without results {len(attempts)} times (last: {why})"
              + (f"; job log: {tail[-1]}" if tail else "")), **fields)
    return False

  def _summary(self, tracked: Mapping[str, Cell], jobs: Mapping[str, Mapping[str, str]],
               runner) -> str:
    by_state: Dict[str, List[str]] = {}
    for job_id in sorted(tracked, key=int):
      state = jobs.get(job_id, {}).get("state", "?")
      by_state.setdefault("running" if state in RUNNING_STATES else state.lower(),
                          []).append(job_id)
    parts = [f"{len(ids)} {state} (job{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
             for state, ids in sorted(by_state.items())]
    return f"  slurm: {', '.join(parts) or 'no jobs'} | {runner.summary()}"

  def _detached_text(self, tracked: Mapping[str, Cell], waiting: Sequence[Any]) -> str:
    ids = ", ".join(sorted(tracked, key=int)) or "none"
    text = (f"detached: {len(tracked)} SLURM job(s) queued or running (jobs {ids}); the same "
            "command without --detach attaches to them and writes the report when the last "
            "cell ends; --list shows them, --cancel cancels them")
    if waiting:
      text += (f"; {len(waiting)} cell(s) wait for room under max_queued = {self.max_queued} "
               "and are submitted when a runner is attached")
    return text

  def cancel(self, cells: Sequence[Cell], runner) -> List[str]:
    """Cancels the queued and running jobs of `cells`; returns their ids. An attached runner
    does not resubmit them: each is marked cancelled in its cell folder first."""
    _require_commands()
    jobs = slurm_cluster.queue()
    cancelled = []
    for cell in cells:
      comment = COMMENT.format(cell=cell.name, root=runner.root)
      ids = sorted((j for j, info in jobs.items() if info["comment"] == comment and
                    info["state"] in ACTIVE_STATES), key=int)
      for job in ids:
        files.write_text_atomic(_cancel_marker(runner.workdir(cell), job), now() + "\n")
        cancelled.append(job)
      if ids:
        fields, _ = self._close(cell, ids[-1], dict(state="CANCELLED"), runner)
        runner.status.set(cell, status="cancelled", error="cancelled with --cancel", **fields)
    slurm_cluster.cancel(cancelled)
    runner.status.write()
    return cancelled


def _require_commands() -> None:
  missing = slurm_cluster.missing_commands()
  if missing:
    raise GridError(f"--executor=slurm: {', '.join(missing)} not found on PATH; run on a SLURM "
                    "login node, or start a one-node cluster on this machine with "
                    "scripts/slurm_cluster_start.sh")


def _cancel_marker(workdir: str, job_id: str) -> str:
  return os.path.join(workdir, SLURM_DIR, f"{job_id}.cancelled")


def _next_step(cell: Cell, workdir: str) -> str:
  """The first step of the cell that is not done."""
  state = files.read_json(os.path.join(workdir, CELL_FILE)) or {}
  return next((s for s, _ in cell.steps(workdir) if not step_done(cell, workdir, s, state)),
              cell.steps(workdir)[-1][0])


def _tail(path: str, lines: int = 30) -> List[str]:
  try:
    with open(path, errors="replace") as f:
      return [l.rstrip("\n") for l in f.readlines()[-lines:]]
  except OSError:
    return []


@contextlib.contextmanager
def _attached(root: str):
  """Holds <root>/.slurm_runner.lock while a runner submits and watches a root's jobs: a second
  runner on the same root is refused instead of submitting the same cells again."""
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, ".slurm_runner.lock"), "a+") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      lock.seek(0)
      holder = lock.read().strip() or "another process"
      raise GridError(f"another runner ({holder}) is attached to the SLURM jobs of {root}; it "
                      "submits and watches them. --list shows their state") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
    lock.flush()
    yield
