"""A loss on one device against the same loss over two replicas, in a fresh process.

Two logical CPU devices can only be made before TensorFlow starts, so each comparison runs as a
script in a new process (`run`). In the script, `two_cpus()` comes first, then the imports of
the code under test; `inputs()` gives the arrays `run` was called with, and `compare(strategy,
fn, *inputs)` prints `fn` on one device and `fn` under the strategy with each input's rows split
in halves, one per replica.
"""

import json
import os
import subprocess
import sys

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str, *arrays):
  """(one device's outputs, two replicas' outputs) of `script` run on `arrays`, each a list with
  one entry per output of the function the script compares."""
  proc = subprocess.run([sys.executable, "-c", script,
                         json.dumps([np.asarray(a).tolist() for a in arrays])],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  return out["one"], out["two"]


def two_cpus():
  """A MirroredStrategy over two logical devices made of this process's CPU."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def inputs():
  """The arrays the script was run on, as float32 tensors."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return [tf.constant(np.array(a, np.float32)) for a in json.loads(sys.argv[1])]


def split(strategy, tensor):
  """`tensor`'s rows in halves, the first on replica 0, the second on replica 1."""
  half = tensor.shape[0] // 2
  return strategy.experimental_distribute_values_from_function(
      lambda ctx: tensor[ctx.replica_id_in_sync_group * half:
                         (ctx.replica_id_in_sync_group + 1) * half])


def emit(one, two) -> None:
  """Prints what `run` returns."""
  print(json.dumps({"one": one, "two": two}))


def compare(strategy, fn, *tensors) -> None:
  """Prints `fn(*tensors)` on one device, and `fn` run on every replica with its half of each
  tensor's rows: scalars summed over the replicas, the rest concatenated in replica order."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  one = [np.asarray(t).tolist() for t in fn(*tensors)]
  two = []
  for output in strategy.run(tf.function(fn), args=[split(strategy, t) for t in tensors]):
    parts = [v.numpy() for v in strategy.experimental_local_results(output)]
    two.append(float(sum(parts)) if parts[0].ndim == 0 else np.concatenate(parts).tolist())
  emit(one, two)
