"""How a number was made: the run record that every results file carries, and the seeding that
makes a run repeatable.

`record(...)` is the "run" field of pretext_results.json and of every evaluation's results file:

  {"git": {"commit": sha | null, "dirty": bool | null},  the project's checkout (null: not a
                                                        git checkout, or git missing)
   "command": the command line (sys.argv, shell-quoted),
   "host": the host name,
   "versions": {"python", "tensorflow", "keras", "tensorflow_datasets", "numpy"},
   "devices": {"accelerator": "GPU" | "TPU" | null, "count": accelerators (0 without),
               "names": the accelerators' names, "cpu": the CPU model, "cpu_simd": its
               vector extensions of SIMD_FLAGS, "cpu_count": the cores this process may use},
   "strategy": {"name": the tf.distribute strategy's class, "replicas": replicas in sync},
   "random_seed": int, "deterministic": whether op determinism was on,
   "environment": the TensorFlow settings of core/runtime.py (TF_ENABLE_ONEDNN_OPTS),
   "finished": the local time the record was made}

The wall time of each phase is in the results file's own "times". `make_repeatable` seeds Python,
NumPy and TensorFlow and, when asked, turns on TensorFlow's op determinism (the augmentation ops
of a parallel input pipeline then give the same draws in the same order: the same numbers on the
same machine, at some cost in speed).
"""

import datetime
import functools
import importlib.metadata
import os
import platform
import shlex
import socket
import subprocess
import sys
from typing import Any, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from core import runtime

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_repeatable(seed: int, deterministic: bool) -> None:
  """Seeds every generator with `seed`; `deterministic`: op determinism for the whole process
  (it cannot be turned off again)."""
  keras.utils.set_random_seed(seed)
  if deterministic:
    tf.config.experimental.enable_op_determinism()


def _op_determinism() -> bool:
  try:
    # pylint: disable-next=g-import-not-at-top
    from tensorflow.python.framework import config as tf_config
    return bool(tf_config.is_op_determinism_enabled())
  except (ImportError, AttributeError):
    return False


def _git(*args: str) -> Optional[str]:
  try:
    proc = subprocess.run(["git", "-C", REPO_ROOT, *args], capture_output=True, text=True,
                          timeout=20)
  except (OSError, subprocess.SubprocessError):
    return None
  return proc.stdout.strip() if proc.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state() -> Dict[str, Any]:
  """The checkout's commit and whether tracked files differ from it (untracked files do not
  count); nulls where this is not a git checkout."""
  commit = _git("rev-parse", "HEAD")
  status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
  return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(distribution: str) -> Optional[str]:
  try:
    return importlib.metadata.version(distribution)
  except importlib.metadata.PackageNotFoundError:
    return None


def versions() -> Dict[str, Optional[str]]:
  return {"python": platform.python_version(), "tensorflow": tf.__version__,
          "keras": keras.__version__, "tensorflow_datasets": _version("tensorflow-datasets"),
          "numpy": np.__version__}


def cpu_model() -> str:
  """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# The CPU's widest vector extensions, as /proc/cpuinfo names them: what a CPU timing depends on
# most (oneDNN's kernels differ between AVX2 and AVX-512 machines of one model name).
SIMD_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_simd() -> List[str]:
  """Which of SIMD_FLAGS the CPU has ([] where /proc/cpuinfo cannot be read)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("flags"):
          present = set(line.split(":", 1)[1].split())
          return [name for name in SIMD_FLAGS if name in present]
  except OSError:
    pass
  return []


def devices() -> Dict[str, Any]:
  """The accelerators TensorFlow sees (kind, count, names) and the CPU."""
  kind, found = None, []
  for candidate in ("TPU", "GPU"):
    found = tf.config.list_physical_devices(candidate)
    if found:
      kind = candidate
      break
  names = []
  for device in found:
    try:
      details = tf.config.experimental.get_device_details(device)
    except (ValueError, RuntimeError):
      details = {}
    names.append(details.get("device_name") or device.name)
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {"accelerator": kind, "count": len(found), "names": names, "cpu": cpu_model(),
          "cpu_simd": cpu_simd(), "cpu_count": cpus}


def record(random_seed: int, strategy: Optional[tf.distribute.Strategy] = None,
           deterministic: Optional[bool] = None) -> Dict[str, Any]:
  """The run record (module docstring) of this process, now."""
  strategy = strategy or tf.distribute.get_strategy()
  return {
      "git": git_state(),
      "command": shlex.join([sys.executable] + sys.argv),
      "host": socket.gethostname(),
      "versions": versions(),
      "devices": devices(),
      "strategy": {"name": type(strategy).__name__.lstrip("_"),
                   "replicas": int(strategy.num_replicas_in_sync)},
      "random_seed": int(random_seed),
      "deterministic": _op_determinism() if deterministic is None else bool(deterministic),
      "environment": runtime.settings(),
      "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
  }
