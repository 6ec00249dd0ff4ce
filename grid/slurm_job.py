"""What runs inside a cell's SLURM job (submitit calls `run` on every task of the job).

Task 0 runs the cell's steps that are not done with the same StepRunner as the local executor
(output in <cell>/log.txt, step records in <cell>/cell.json). With more than one task, every
task runs the pretext training together (--strategy=multi_worker, its cluster from SLURM's
environment) and task 0 alone the evaluations; the other tasks' output goes to
<cell>/slurm/<job id>_task<k>.txt.

Task 0 keeps the job's record in <cell>/slurm/<job id>.json: where and when it ran and how it
ended (status done, failed, or interrupted: stopped from outside by scancel, the time limit,
preemption or a killed step). The grid runner reads it once the job has left the queue.
"""

import os
import socket
import time
from typing import Any, Dict, Mapping, Sequence

from core import files
from core import interrupts
from core.files import CELL_FILE
from core.options import flags_to_args
from grid import slurm_settings
from grid.cells import Cell
from grid.common import SLURM_DIR, now
from grid.state import step_done
from grid.steps import StepRunner


def record_path(workdir: str, job_id: str) -> str:
  return os.path.join(workdir, SLURM_DIR, f"{job_id}.json")


def _environment() -> Dict[str, str]:
  """The steps' environment: TensorFlow on the CPUs SLURM gave this task (without CPU binding
  it would otherwise take every CPU of the node)."""
  env = dict(os.environ)
  cpus = env.get("SLURM_CPUS_PER_TASK")
  if not cpus and env.get("SLURM_CPUS_ON_NODE"):
    cpus = str(max(1, int(env["SLURM_CPUS_ON_NODE"]) // int(env.get("SLURM_NTASKS_PER_NODE")
                                                            or 1)))
  if cpus:
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
      env.setdefault(name, cpus)
  return env


def run(cell: Cell, root: str, command: Sequence[str], grid_info: Mapping[str, Any]
        ) -> Dict[str, Any]:
  """Runs `cell` in its job; returns task 0's outcome (StepRunner.run_cell's), or the other
  tasks' exit status."""
  import submitit  # pylint: disable=g-import-not-at-top  (only on the node)
  job = submitit.JobEnvironment()
  workdir = os.path.join(root, cell.name)
  env = _environment()
  runtime = slurm_settings.runtime_flags(cell.slurm)
  steps = StepRunner(command, env)
  if job.global_rank > 0:
    return _run_worker(cell, workdir, steps, runtime, job.job_id, job.global_rank)
  path = record_path(workdir, job.job_id)
  record = dict(job_id=job.job_id, host=socket.gethostname(), tasks=job.num_tasks,
                restarts=int(os.environ.get("SLURM_RESTART_COUNT", "0")), started=now(),
                status="running")
  files.write_json_atomic(path, record)
  start = time.time()
  try:
    outcome = steps.run_cell(cell, workdir, grid_info, runtime_flags=runtime,
                             record=dict(job_id=job.job_id))
  except BaseException as e:  # The time-limit signal (submitit raises), or an interrupt.
    record.update(status="interrupted", error=f"{type(e).__name__}: {e}", ended=now(),
                  wall_s=round(time.time() - start, 1))
    files.write_json_atomic(path, record)
    raise
  status = outcome["status"]
  if status == "failed" and interrupts.stopped_by_signal(outcome.get("exit_code")):
    # A step stopped by a signal (scancel, preemption, the time limit: it saved its step first,
    # core/interrupts.py) or killed by one (the OOM killer).
    status = "interrupted"
  record.update(outcome, status=status, ended=now())
  files.write_json_atomic(path, record)
  return outcome


# How long a task other than 0 waits for task 0 to have set the cell up (grid/steps.run_cell:
# what was made with other settings moved aside, the pretext step recorded).
WORKER_WAIT_S = 600


def _run_worker(cell: Cell, workdir: str, steps: StepRunner, runtime, job_id: str,
                rank: int) -> Dict[str, Any]:
  """A task other than 0 of a multi-worker job: the pretext training, if task 0 runs it, once
  task 0 has recorded that step with the cell's settings (so that it never starts on outputs of
  other settings that task 0 is about to move aside)."""
  wanted = cell.fingerprints().get("pretext")
  deadline = time.time() + WORKER_WAIT_S
  while True:
    state = files.read_json(os.path.join(workdir, CELL_FILE)) or {}
    if ((state.get("steps") or {}).get("pretext") or {}).get("fingerprint") == wanted:
      break
    if time.time() > deadline:
      return dict(status="failed", exit_code=None, wall_s=0.0,
                  error=f"task 0 did not record the pretext step in {WORKER_WAIT_S} s")
    time.sleep(0.5)
  for step, flags in cell.steps(workdir):
    if step != "pretext" or step_done(cell, workdir, step, state):
      continue
    argv = steps.command + flags_to_args(dict(flags, **runtime.get(step, {})))
    log = os.path.join(workdir, SLURM_DIR, f"{job_id}_task{rank}.txt")
    code, _, seconds = steps.run_step(cell, step, argv, log)
    return dict(status="done" if code == 0 else "failed", exit_code=code,
                wall_s=round(seconds, 1))
  return dict(status="done", exit_code=0)
