"""The cluster of a multi-worker training launched by SLURM's srun: every task of the job step is
a worker, found from SLURM's environment by tf.distribute's SlurmClusterResolver (no TF_CONFIG)."""

import os

import tensorflow as tf

# Ports of a job's workers on a node start at PORT_BASE_FIRST + (job id % PORT_BLOCKS) * PORT_BLOCK,
# so that two multi-worker jobs sharing a node do not take the same ports; one block holds up to
# PORT_BLOCK tasks per node. SSL_BENCH_PORT_BASE sets the first port instead.
PORT_BASE_FIRST, PORT_BLOCK, PORT_BLOCKS = 20000, 32, 1000


def in_slurm_step() -> bool:
  """Whether this process is a task of a SLURM job step (started by srun)."""
  return "SLURM_PROCID" in os.environ and "SLURM_STEP_NUM_TASKS" in os.environ


def port_base() -> int:
  """The first port of this job's workers on each node."""
  if os.environ.get("SSL_BENCH_PORT_BASE"):
    return int(os.environ["SSL_BENCH_PORT_BASE"])
  job = int(os.environ.get("SLURM_JOB_ID", "0"))
  return PORT_BASE_FIRST + (job % PORT_BLOCKS) * PORT_BLOCK


def visible_gpus() -> int:
  """GPUs SLURM gave this task (CUDA_VISIBLE_DEVICES, which it sets for GPU allocations)."""
  return len([d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()])


class _CpuSlurmClusterResolver(tf.distribute.cluster_resolver.SlurmClusterResolver):
  """SlurmClusterResolver for nodes without GPUs.

  Its GPU bookkeeping needs at least one GPU per task, so it is given one nominal GPU per task
  of the step, which it does not put into the environment, and it reports no accelerators:
  each worker trains on its CPU.
  """

  def __init__(self, port: int):
    super().__init__(port_base=port, gpus_per_node=int(os.environ["SLURM_STEP_NUM_TASKS"]),
                     gpus_per_task=1, auto_set_gpu=False)

  def num_accelerators(self, task_type=None, task_id=None, config_proto=None):
    del task_type, task_id, config_proto
    return {}


def slurm_cluster_resolver() -> tf.distribute.cluster_resolver.ClusterResolver:
  """The cluster of this SLURM job step: one worker per task, worker 0 the chief; each node's
  GPUs shared out evenly over its tasks (ask for them with --gpus-per-node)."""
  if not in_slurm_step():
    raise ValueError("not a task of a SLURM job step: launch it with srun (SLURM_PROCID and "
                     "SLURM_STEP_NUM_TASKS are not set)")
  gpus = visible_gpus()
  if gpus:
    return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=port_base(),
                                                               gpus_per_node=gpus)
  return _CpuSlurmClusterResolver(port_base())
