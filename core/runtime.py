"""TensorFlow's process settings that must be made before it is imported: entry points call
`set_defaults()` first thing, before any module that imports TensorFlow.

This module imports nothing of TensorFlow or of the project.
"""

import os
from typing import MutableMapping

# TensorFlow's own default turns its oneDNN CPU kernels on only on CPUs with AVX-512 VNNI or
# newer. Elsewhere (e.g. AVX2 CPUs) the training step runs on Eigen's kernels, whose convolution
# gradients are several times slower (bench/throughput.py --profile shows them). oneDNN is then
# also what fuses a batch norm's kernel with the ReLU after it. Its results differ from Eigen's
# by float rounding only.
DEFAULTS = {"TF_ENABLE_ONEDNN_OPTS": "1"}


def set_defaults(environ: MutableMapping[str, str] = os.environ) -> None:
  """Sets each of `DEFAULTS` that `environ` does not set already (an explicit value, e.g.
  TF_ENABLE_ONEDNN_OPTS=0, is kept)."""
  for name, value in DEFAULTS.items():
    environ.setdefault(name, value)


def settings(environ: MutableMapping[str, str] = os.environ) -> dict:
  """The values of `DEFAULTS`' variables in this process, for run records."""
  return {name: environ.get(name) for name in DEFAULTS}


_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _ProjectInfoOnly:
  """A logging filter: the project's own records; of installed packages (TensorFlow, TFDS, ...)
  only warnings and errors, and of those not the notes that an API they use themselves is
  deprecated (TFDS's own reader logs one per pipeline), which nobody running the suite can act
  on."""

  def filter(self, record) -> bool:
    path = getattr(record, "pathname", "") or ""
    if path.startswith(_PROJECT_ROOT + os.sep) and "site-packages" not in path:
      return True
    return record.levelno >= 30 and "deprecated" not in str(record.msg)


def quiet_logs(verbose: bool = False) -> None:
  """The entry points' log output: the project's progress lines, and the libraries' warnings
  (`_ProjectInfoOnly`); everything of TensorFlow's and TFDS's, their INFO lines too, with
  `verbose`. (TensorFlow's C++ INFO lines follow TF_CPP_MIN_LOG_LEVEL, which the entry points
  set to 1 unless it is set.)"""
  import logging  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.INFO)
  handler = absl_logging.get_absl_handler()
  for old in [f for f in handler.filters if isinstance(f, _ProjectInfoOnly)]:
    handler.removeFilter(old)
  tf_logger = logging.getLogger("tensorflow")
  for old in [f for f in tf_logger.filters if isinstance(f, _ProjectInfoOnly)]:
    tf_logger.removeFilter(old)
  if not verbose:
    handler.addFilter(_ProjectInfoOnly())
    tf_logger.addFilter(_ProjectInfoOnly())


# Where an NVIDIA driver shows the machine's GPUs.
NVIDIA_DEVICES = "/dev/nvidia[0-9]*"


def unseen_gpu_note(visible_gpus: int, devices: str = NVIDIA_DEVICES) -> str:
  """A line for a machine with NVIDIA GPUs (`devices`, a glob) of which TensorFlow sees none
  (`visible_gpus`): why, and what to do; '' otherwise."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  found = sorted(glob.glob(devices))
  if visible_gpus or not found:
    return ""
  try:
    importlib.metadata.version("tensorflow-cpu")
    why = ("the CPU build of TensorFlow (tensorflow-cpu) is installed: `make venv GPU=1` "
           "installs the GPU build of the same version")
  except importlib.metadata.PackageNotFoundError:
    why = ("TensorFlow could not load CUDA (run with TF_CPP_MIN_LOG_LEVEL=0 to see why; "
           "`make venv GPU=1` installs the CUDA and cuDNN wheels it needs)")
  return (f"this machine has {len(found)} NVIDIA GPU(s) ({', '.join(found)}) but TensorFlow "
          f"sees none and runs on the CPU: {why}")
