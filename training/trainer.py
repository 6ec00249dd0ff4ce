"""The generic trainer: any method's model_fn, under a tf.distribute strategy, resumable.

It knows nothing of the method it runs beyond the contract of methods/base.py.
"""

import contextlib
import dataclasses
import functools
import glob
import math
import os
import shutil
import signal
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from core import files
from core import interrupts
from core.config import Config
from core.errors import ConfigError
from core.durations import format_duration
import datasets
from methods import base
from training import cluster
from training import run_record
from training import schedules


# How long one call of the training step runs (after the first): how soon a signal that asks
# to stop is acted on, and the grain of the progress lines' timing.
CHUNK_SECONDS = 1.0
PROGRESS_SECONDS = 30.0  # Between the progress lines of an evaluation.


def load_run_config(workdir: str, **changes) -> Config:
  """The config of the pretext run in `workdir` (its config.json, as train_and_eval.py wrote it),
  with `changes`; a ConfigError where the folder holds no run."""
  saved = files.read_json(os.path.join(workdir, files.CONFIG_FILE))
  if not isinstance(saved, dict):
    raise ConfigError(f"{workdir} holds no pretext run (no {files.CONFIG_FILE}); give the "
                      "--workdir of a train_and_eval.py run")
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields}
  values.update(workdir=workdir, **changes)  # Its checkpoints where it is now.
  return Config(**values)


class NonFiniteLossError(RuntimeError):
  """Training produced a NaN or infinite loss."""


def check_strategy(name: str) -> None:
  """ValueError where this process cannot make the strategy `name` (a multi-worker one without
  its cluster); it makes nothing."""
  if name == "multi_worker" and not (os.environ.get("TF_CONFIG") or cluster.in_slurm_step()):
    raise ValueError("--strategy=multi_worker needs TF_CONFIG in the environment of every "
                     "worker, e.g. {\"cluster\": {\"worker\": [\"host1:2222\", "
                     "\"host2:2222\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}, "
                     "or to be started by SLURM's srun (one task per worker)")


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy called `name`.

  default: one device. mirrored: every local GPU, or every logical CPU device. multi_worker:
  MultiWorkerMirroredStrategy over the hosts of TF_CONFIG (every host runs the same command
  with its own TF_CONFIG), or, without TF_CONFIG, over the tasks of the SLURM job step that
  srun started (training/cluster.py); the workdir must be on storage that all of them see. tpu: the
  TPU named by TPU_NAME (default: the local one).
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    check_strategy(name)
    if os.environ.get("TF_CONFIG"):
      return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MultiWorkerMirroredStrategy(
        cluster_resolver=cluster.slurm_cluster_resolver())
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=os.environ.get("TPU_NAME", "local"))
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"unknown strategy {name!r}; valid choices: default, mirrored, multi_worker, "
                   "tpu")


def worker_id(strategy: tf.distribute.Strategy) -> Optional[int]:
  """None on the worker that writes the run's files (the chief), else this worker's index.

  Only a multi-worker strategy has non-chief workers: they take part in every collective
  (checkpoint saves and exports included) but write to temporary places that they remove.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
    return None
  task_type, task_id = resolver.task_type, resolver.task_id
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  if task_type in (None, "chief") or (task_type == "worker" and task_id == 0 and not has_chief):
    return None
  return int(task_id) + (1 if has_chief else 0)


def worker_scratch_dir(config: Config, worker: Optional[int]) -> Optional[str]:
  """Where a non-chief worker writes what only the chief keeps; None for the chief."""
  return None if worker is None else os.path.join(config.workdir, f"worker{worker}.tmp")


@contextlib.contextmanager
def dtype_policy(precision: str):
  """Layers created inside compute in `precision` (float32, mixed_float16, mixed_bfloat16).

  Variables stay float32; the methods cast logits to float32 before their losses.
  """
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(precision)
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


@dataclasses.dataclass(frozen=True)
class Plan:
  """Steps derived from the dataset size and the config."""
  num_train_examples: int
  steps_per_epoch: float
  total_steps: int


def make_plan(config: Config) -> Plan:
  num = datasets.get_num_examples(config.dataset, config.train_split, config.data_dir)
  if num < config.batch_size:
    raise ValueError(f"--train_split={config.train_split!r} of {config.dataset} has {num} "
                     f"examples, fewer than --batch_size={config.batch_size}")
  steps_per_epoch = num / config.batch_size
  return Plan(num, steps_per_epoch, max(1, int(math.ceil(config.epochs * steps_per_epoch))))


def kept_steps(plan: Plan, every_epochs: Optional[float], at_steps: Sequence[int]) -> List[int]:
  """The steps whose checkpoints are kept for probes over training: step 0, every
  `every_epochs` epochs, `at_steps`, and the last step; none without either setting."""
  if not every_epochs and not at_steps:
    return []
  beyond = [s for s in at_steps if s > plan.total_steps]
  if beyond:
    raise ConfigError(f"--eval_at_steps: {beyond} lie beyond the last step of this run "
                      f"({plan.total_steps}: {plan.steps_per_epoch:.1f} steps per epoch)")
  steps = {0, plan.total_steps}
  steps.update(at_steps)
  if every_epochs:
    k = 1
    # A point within the last step is the last step (2 epochs of 703.1 steps end at step 1407).
    while math.ceil(k * every_epochs * plan.steps_per_epoch) < plan.total_steps:
      steps.add(int(round(k * every_epochs * plan.steps_per_epoch)))
      k += 1
  return sorted(steps)


def _distributed_data(config: Config, strategy, split: str, is_training: bool, global_batch: int,
                      indices: Optional[Sequence[int]] = None):
  preprocess_fn = datasets.get_preprocess_fn(config.preprocessing, is_training,
                                             datasets.PreprocessConfig.of(config))

  def dataset_fn(input_context):
    return datasets.get_data(
        config.dataset, split, is_training=is_training, preprocess_fn=preprocess_fn,
        batch_size=input_context.get_per_replica_batch_size(global_batch),
        data_dir=config.data_dir, shuffle_buffer=config.shuffle_buffer, seed=config.random_seed,
        input_context=input_context, indices=indices)

  return strategy.distribute_datasets_from_function(dataset_fn)


def _per_example_image_shape(dist_dataset) -> tuple:
  spec = dist_dataset.element_spec["image"]
  if isinstance(spec, tf.TypeSpec) and not isinstance(spec, tf.TensorSpec):
    spec = spec._component_specs[0]  # PerReplica spec under a multi-device strategy.
  return tuple(spec.shape[1:])


class _MetricAccumulator:
  """Sums of per-example metric values and their counts, reduced to means on read."""

  def __init__(self):
    self.sums: Dict[str, float] = {}
    self.counts: Dict[str, float] = {}

  def add(self, sums: Dict[str, tf.Tensor], counts: Dict[str, tf.Tensor]):
    for k, v in sums.items():
      self.sums[k] = self.sums.get(k, 0.0) + float(v)
      self.counts[k] = self.counts.get(k, 0.0) + float(counts[k])

  def means(self) -> Dict[str, float]:
    return {k: self.sums[k] / max(self.counts[k], 1.0) for k in self.sums}


def _sums_and_counts(metrics: Dict[str, tf.Tensor]):
  sums = {k: tf.reduce_sum(tf.cast(v, tf.float32)) for k, v in metrics.items()}
  counts = {k: tf.cast(tf.size(v), tf.float32) for k, v in metrics.items()}
  return sums, counts


@dataclasses.dataclass
class TrainState:
  """What `train` built; the model is ready for evaluation and export."""
  model: keras.Model
  step: int
  plan: Plan
  image_shape: tuple
  metrics: Dict[str, float]


class Trainer:
  """Builds the model for a method inside a strategy and trains it, resuming from checkpoints."""

  def __init__(self, config: Config, method, strategy: Optional[tf.distribute.Strategy] = None,
               print_fn: Callable[[str], None] = logging.info):
    self.config = config
    self.method = method
    self.strategy = strategy or tf.distribute.get_strategy()
    self.print_fn = print_fn
    self.plan = make_plan(config)
    # Before the input pipeline is traced: its augmentation ops take their seeds from this.
    run_record.make_repeatable(config.random_seed, config.deterministic)
    self.info = datasets.get_dataset_info(config.dataset, config.data_dir)
    self.train_data = _distributed_data(config, self.strategy, config.train_split, True,
                                        config.batch_size)
    self.image_shape = _per_example_image_shape(self.train_data)
    with self.strategy.scope():
      keras.utils.set_random_seed(config.random_seed)  # The same weights whatever came before.
      with dtype_policy(config.precision):
        self.model = method.build_model(config, self.image_shape, self.info.num_classes)
      self.optimizer = schedules.make_optimizer(
          config.optimizer, config.lr, config.batch_size, config.lr_scale_batch_size,
          self.plan.steps_per_epoch, config.warmup_epochs, config.decay_epochs,
          config.lr_decay_factor, config.lr_schedule, config.epochs)
      if config.precision == "mixed_float16":
        # Dynamic loss scaling: float16 gradients underflow without it.
        self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
      self.optimizer.build(base.trained_variables(self.model))
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                          step=self.step)
    # Every worker saves (saving is collective); only the chief's checkpoints are kept.
    self.scratch_dir = worker_scratch_dir(config, worker_id(self.strategy))
    self.manager = tf.train.CheckpointManager(
        self.checkpoint,
        os.path.join(self.scratch_dir, "checkpoints") if self.scratch_dir else
        config.checkpoint_dir,
        max_to_keep=config.keep_checkpoint_max, step_counter=self.step)
    self.kept_steps = kept_steps(self.plan, config.eval_every_epochs, config.eval_at_steps)
    self.kept_checkpoint, self.kept_manager = None, None
    if self.kept_steps:
      # The weights alone (not the optimizer's slots): what an export of that step needs.
      self.kept_checkpoint = tf.train.Checkpoint(model=self.model, step=self.step)
      self.kept_manager = tf.train.CheckpointManager(
          self.kept_checkpoint,
          os.path.join(self.scratch_dir or config.workdir, files.KEPT_CHECKPOINTS_DIR),
          max_to_keep=None, step_counter=self.step)

  def restore(self) -> int:
    """Restores the latest checkpoint, if any; returns the step it holds."""
    latest = tf.train.latest_checkpoint(self.config.checkpoint_dir)  # The chief's, on every worker.
    if latest:
      self.checkpoint.restore(latest).assert_existing_objects_matched()
      self.print_fn(f"restored {latest} at step {int(self.step.numpy())}")
    return int(self.step.numpy())

  def _train_step_fn(self):
    config, method, model, optimizer = self.config, self.method, self.model, self.optimizer
    strategy = self.strategy
    weight_decay = config.resolved_weight_decay()
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    variables = base.trained_variables(model)
    after_step = getattr(method, "after_step", None)
    total_steps = float(self.plan.total_steps)

    def step_fn(batch):
      with tf.GradientTape() as tape:
        spec = method.model_fn(model, batch, base.TRAIN, config)
        total = spec.loss + schedules.l2_decay(variables, weight_decay)
        scaled = total / strategy.num_replicas_in_sync
        if loss_scaled:
          scaled = optimizer.scale_loss(scaled)  # apply_gradients unscales and skips inf/NaN.
      grads = tape.gradient(scaled, variables)
      optimizer.apply_gradients(zip(grads, variables))
      sums, counts = _sums_and_counts(spec.metrics)
      sums["total_loss"], counts["total_loss"] = total, tf.constant(1.0)
      return sums, counts, {k: tf.stop_gradient(v) for k, v in spec.updates.items()}

    if config.jit_compile:
      step_fn = tf.function(step_fn, jit_compile=True)

    def one_step(iterator):
      sums, counts, updates = strategy.run(step_fn, args=(next(iterator),))
      if after_step is not None:  # The method's own state, from every replica's batch.
        after_step(model, {k: strategy.gather(v, axis=0) for k, v in updates.items()},
                   tf.cast(self.step, tf.float32) / total_steps, config)
      self.step.assign_add(1)
      return ({k: strategy.reduce("SUM", v, axis=None) for k, v in sums.items()},
              {k: strategy.reduce("SUM", v, axis=None) for k, v in counts.items()})

    @tf.function
    def train_steps(iterator, num_steps):
      """Runs `num_steps` >= 1 steps; returns metric sums and counts over them."""
      sums, counts = one_step(iterator)
      for _ in tf.range(num_steps - 1):
        s, c = one_step(iterator)
        sums = {k: sums[k] + s[k] for k in sums}
        counts = {k: counts[k] + c[k] for k in counts}
      return sums, counts

    return train_steps

  def _agree(self, flag: bool, chunk: int) -> Tuple[bool, int]:
    """(`flag` if any worker has it, the workers' mean of `chunk`): under a multi-worker strategy
    saving is collective and every worker must call the training step with the same number of
    steps, so every worker must decide alike; elsewhere the values as they are."""
    if not isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      return flag, chunk
    votes = self.strategy.run(lambda: tf.constant([float(flag), float(chunk)]))
    total = self.strategy.reduce("SUM", votes, axis=None).numpy()
    return bool(total[0] > 0), max(1, int(total[1] / self.strategy.num_replicas_in_sync))

  def _all_agree(self, flag: bool) -> bool:
    """`flag` if any worker has it (see `_agree`)."""
    return self._agree(flag, 1)[0]

  def _steps_to_next_stop(self, step: int) -> int:
    """Steps until the next log line, step-based checkpoint or the end, whichever comes first."""
    config = self.config
    num = min(config.log_every_steps - step % config.log_every_steps,
              self.plan.total_steps - step)
    if config.save_checkpoints_steps:
      num = min(num, config.save_checkpoints_steps - step % config.save_checkpoints_steps)
    later = [s for s in self.kept_steps if s > step]
    if later:
      num = min(num, later[0] - step)
    return num

  def _keep(self, step: int) -> None:
    """Saves the checkpoint of `step` among the kept ones, if it is one of theirs."""
    if step in self.kept_steps:
      self.kept_manager.save(checkpoint_number=step)

  def kept_checkpoints(self) -> List[Tuple[int, str]]:
    """(step, path) of the kept checkpoints on disk (the chief's, on every worker), by step."""
    directory = os.path.join(self.config.workdir, files.KEPT_CHECKPOINTS_DIR)
    found = []
    for index in glob.glob(os.path.join(directory, "ckpt-*.index")):
      number = os.path.basename(index)[len("ckpt-"):-len(".index")]
      if number.isdigit():
        found.append((int(number), index[:-len(".index")]))
    return sorted(found)

  def restore_kept(self, path: str) -> None:
    """Restores the weights (and step) of a kept checkpoint; the optimizer keeps its state."""
    self.kept_checkpoint.restore(path).assert_existing_objects_matched()

  def train(self, stop: Optional[interrupts.StopOnSignal] = None) -> TrainState:
    """Trains from the latest checkpoint to the planned step count.

    The steps run in calls of about CHUNK_SECONDS each (the first, which traces the step, is one
    step and is left out of the speed and the ETA). With `stop`, a signal that asks to stop is
    acted on at the end of the call it arrives in: a checkpoint of that step is saved and
    `interrupts.Interrupted` raised, so that the same command resumes from that very step.
    """
    config, plan = self.config, self.plan
    start = self.restore()
    if start >= plan.total_steps:
      self.print_fn(f"training already complete: step {start} of {plan.total_steps}")
      return TrainState(self.model, start, plan, self.image_shape, {})
    self.print_fn(
        f"training {config.task} on {config.dataset}:{config.train_split} "
        f"({plan.num_train_examples} examples, {plan.steps_per_epoch:.1f} steps/epoch) "
        f"from step {start} to {plan.total_steps}, {self.strategy.num_replicas_in_sync} replica(s)")
    if start == 0 and self.kept_steps:
      self._keep(0)  # The network before training: the first point of a series.
    train_steps = self._train_step_fn()
    iterator = iter(self.train_data)
    writer = (tf.summary.create_noop_writer() if self.scratch_dir else
              tf.summary.create_file_writer(os.path.join(config.workdir, "train")))
    step, metrics = start, {}
    last_save_step, last_save_time = start, time.time()
    timed_steps, timed_secs = 0, 0.0  # Excludes the first call, which traces the graph.
    chunk = 1
    with contextlib.ExitStack() as saving:
      while step < plan.total_steps:
        first, target = step + 1, step + self._steps_to_next_stop(step)
        acc = _MetricAccumulator()
        while step < target:
          num = min(chunk, target - step)
          t = time.time()
          acc.add(*train_steps(iterator, tf.constant(num)))
          elapsed = time.time() - t
          traced = step > start
          step = int(self.step.numpy())
          if traced:
            timed_steps, timed_secs = timed_steps + num, timed_secs + elapsed
          elif stop is not None:
            saving.enter_context(stop.saving())  # There is progress to save from now on.
          wanted = max(1, int(CHUNK_SECONDS * timed_steps / max(timed_secs, 1e-9))) \
              if timed_steps else 1
          stopping, chunk = self._agree(stop is not None and stop.requested is not None,
                                        wanted)
          if stopping:
            writer.flush()
            if not all(math.isfinite(v) for v in acc.means().values()):
              raise NonFiniteLossError(
                  f"non-finite loss between steps {first} and {step}; stopped without saving, "
                  f"the last checkpoint ({self.manager.latest_checkpoint}) is intact")
            self._keep(step)  # Where the call ended at a kept step (probes over training).
            saved = self.manager.save(checkpoint_number=step) if step > last_save_step \
                else self.manager.latest_checkpoint
            raise interrupts.Interrupted(
                stop.requested or signal.SIGTERM,
                f"at step {step} of {plan.total_steps}: saved {saved}")
        metrics = acc.means()
        if not all(math.isfinite(v) for v in metrics.values()):
          raise NonFiniteLossError(
              f"non-finite loss between steps {first} and {step} "
              f"({', '.join(f'{k}={v}' for k, v in sorted(metrics.items()))}); stopped without "
              f"saving, the last checkpoint ({self.manager.latest_checkpoint}) is intact")
        lr = float(self.optimizer.learning_rate)
        rate = timed_steps * config.batch_size / max(timed_secs, 1e-9) if timed_steps else None
        with writer.as_default(step=step):
          for k, v in metrics.items():
            tf.summary.scalar(k, v)
          tf.summary.scalar("learning_rate", lr)
          if rate is not None:
            tf.summary.scalar("images_per_sec", rate)
        if rate is None:  # Only the first, traced step so far.
          speed = "- img/s | ETA -"
        else:
          eta = (plan.total_steps - step) * config.batch_size / max(rate, 1e-9)
          speed = f"{rate:.0f} img/s | ETA {format_duration(eta)}"
        shown = " ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()))
        self.print_fn(f"step {step}/{plan.total_steps} (epoch {step / plan.steps_per_epoch:.2f}) "
                      f"{shown} lr {lr:.4g} | {speed}")
        steps_due = (config.save_checkpoints_steps and
                     step - last_save_step >= config.save_checkpoints_steps)
        secs_due = self._all_agree(config.save_checkpoints_secs is not None and
                                   time.time() - last_save_time >= config.save_checkpoints_secs)
        # The kept checkpoint first: a run killed between the two saves resumes before this step.
        self._keep(step)
        if steps_due or secs_due or step >= plan.total_steps:
          self.manager.save(checkpoint_number=step)
          last_save_step, last_save_time = step, time.time()
    writer.flush()
    if self.scratch_dir:
      shutil.rmtree(self.scratch_dir, ignore_errors=True)
    return TrainState(self.model, step, plan, self.image_shape, metrics)

  def evaluate(self, split: Optional[str] = None,
               indices: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Mean of the method's per-example metrics over a whole split (deterministic preprocessing),
    or over its images at `indices` (positions in the split's stored order) alone."""
    config = self.config
    split = split or config.val_split
    global_batch = config.eval_batch_size or config.batch_size
    data = _distributed_data(config, self.strategy, split, False, global_batch, indices)
    num = (len(indices) if indices is not None else
           datasets.get_num_examples(config.dataset, split, config.data_dir))
    total = math.ceil(num / global_batch)
    self.print_fn(f"evaluating {config.task} on {config.dataset}:{split}: {num} images, "
                  f"{total} batches")
    acc = _MetricAccumulator()
    t0, batches, shown = time.time(), 0, time.time()
    for batch in data:
      acc.add(*self._eval_step(batch))
      batches += 1
      if time.time() - shown >= PROGRESS_SECONDS and batches < total:
        shown = time.time()
        eta = (shown - t0) / batches * (total - batches)
        self.print_fn(f"evaluation: batch {batches}/{total} | ETA {format_duration(eta)}")
    metrics = acc.means()
    metrics["num_examples"] = int(next(iter(acc.counts.values()), 0))
    subset = "" if indices is None else f" ({len(indices)} images)"
    self.print_fn(f"evaluated {config.task} on {config.dataset}:{split}{subset} in {batches} "
                  f"batches, {time.time() - t0:.1f}s: " + " ".join(f"{k} {v:.4f}" for k, v in
                                                                   sorted(metrics.items())))
    return metrics

  @functools.cached_property
  def _eval_step(self):
    """One traced evaluation step for every `evaluate` call: sums and counts of the method's
    per-example metrics over a batch."""
    config, method, model, strategy = self.config, self.method, self.model, self.strategy

    @tf.function
    def eval_step(batch):
      def step_fn(b):
        return _sums_and_counts(method.model_fn(model, b, base.EVAL, config).metrics)
      s, c = strategy.run(step_fn, args=(batch,))
      return ({k: strategy.reduce("SUM", v, axis=None) for k, v in s.items()},
              {k: strategy.reduce("SUM", v, axis=None) for k, v in c.items()})

    return eval_step

  def evaluate_by_label(self, split: Optional[str] = None) -> Dict[int, Dict[str, float]]:
    """`evaluate` on the images of each dataset label of `split` alone, by label: e.g. which
    classes a pretext task generalises on. Their means, weighted by `num_examples`, are the
    whole split's."""
    config = self.config
    split = split or config.val_split
    labels = datasets.split_labels(config.dataset, split, config.data_dir)
    return {int(k): self.evaluate(split, np.flatnonzero(labels == k)) for k in np.unique(labels)}
