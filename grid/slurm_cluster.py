"""What the SLURM executor asks the cluster, through SLURM's own commands: its partitions, this
user's jobs, whether it would accept a job (sbatch --test-only), cancelling jobs."""

import shutil
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence

from grid import slurm_settings

COMMANDS = ("sbatch", "squeue", "scancel", "scontrol")
# squeue's states of a job that has not ended yet; of those, the ones where it runs.
ACTIVE_STATES = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                 "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING",
                 "RESV_DEL_HOLD", "SPECIAL_EXIT")
RUNNING_STATES = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING")


class ClusterError(RuntimeError):
  """A SLURM command failed; the message is its own last line."""


def _run(argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess:
  return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


def _message(proc: subprocess.CompletedProcess) -> str:
  text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
  return text[-1].strip() if text else f"exit {proc.returncode}"


def missing_commands() -> List[str]:
  """The SLURM commands that are not on PATH."""
  return [c for c in COMMANDS if shutil.which(c) is None]


def partitions() -> Dict[str, Dict[str, Any]]:
  """The cluster's partitions: name -> {default: bool, max_time, default_time: minutes or
  None (no limit)}."""
  proc = _run(["scontrol", "show", "partition", "--oneliner"])
  if proc.returncode != 0:
    raise ClusterError(f"scontrol show partition: {_message(proc)}")
  out = {}
  for line in proc.stdout.splitlines():
    fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
    if "PartitionName" not in fields:
      continue
    limits = {}
    for key, field in (("max_time", "MaxTime"), ("default_time", "DefaultTime")):
      value = fields.get(field, "UNLIMITED")
      limits[key] = None if value in ("UNLIMITED", "NONE", "INFINITE") else \
          slurm_settings.parse_time(value)
    out[fields["PartitionName"]] = dict(default=fields.get("Default") == "YES", **limits)
  return out


def queue() -> Dict[str, Dict[str, str]]:
  """This user's jobs that squeue knows (ended ones too, for MinJobAge): id -> {state, where
  (its nodes, or why it waits), start, comment}."""
  proc = _run(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%R|%S|%k"])
  if proc.returncode != 0:
    raise ClusterError(f"squeue: {_message(proc)}")
  jobs = {}
  for line in proc.stdout.splitlines():
    parts = line.split("|", 4)
    if len(parts) == 5:
      jobs[parts[0]] = dict(state=parts[1].split()[0], where=parts[2], start=parts[3],
                            comment=parts[4])
  return jobs


def test_only(parameters: Mapping[str, Any]) -> Optional[str]:
  """Whether sbatch would take a job with these submitit parameters (sbatch's options, '_'
  for '-'; additional_parameters: more options): None, or sbatch's reason why not. Submits
  nothing."""
  options = [f"--{k.replace('_', '-')}={v}" for k, v in parameters.items()
             if k != "additional_parameters"]
  for k, v in (parameters.get("additional_parameters") or {}).items():
    options.append(f"--{k}" if v is True else f"--{k}={v}")
  proc = _run(["sbatch", "--test-only", *options, "--wrap=true"])
  return None if proc.returncode == 0 else _message(proc)


def cancel(job_ids: Sequence[str]) -> None:
  if job_ids:
    proc = _run(["scancel", *job_ids])
    if proc.returncode != 0:
      raise ClusterError(f"scancel {' '.join(job_ids)}: {_message(proc)}")
