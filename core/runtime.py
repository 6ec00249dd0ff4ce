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
