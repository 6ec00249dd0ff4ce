"""Semi-supervised fine-tuning (the protocol of S4L and SimCLR v2): the whole pretrained backbone
plus a new linear head on its `pre_logits`, trained on a labelled subset of the training split,
then tested on the whole test split. `run_fine_tune(FineTuneConfig)`.

The backbone is rebuilt from the export's facts (export_info.json: architecture, width, version)
and its weights read from the export's variables, so the export itself is never written to; for
the baseline (`hub_module` None) it is a fresh random-init backbone of `architecture`. Batch norm
trains along (batch statistics in training). The subset is the low-label evaluation's
(eval/low_label.py: `train_fraction` or `examples_per_class`, class-balanced, seeded), drawn in
the order of an evaluation pass over the training split; without either, the whole split.
Training batches go through `preprocessing` (default: the evaluation preprocessing) with its
training-time augmentation, the test split through the deterministic evaluation preprocessing.
Inputs of patch methods ([P,h,w,C] per example) are embedded patch by patch and their
pre_logits averaged. The head starts at zero; the backbone and the head have their own rates
(`backbone_lr`, `lr`) on one schedule. Checkpoints in <workdir>/checkpoints make it resumable;
they are removed once results.json is written (schema: eval/results.py, evaluation
"fine_tune", one layer: pre_logits, the layer the head sits on). Under --strategy (mirrored,
multi_worker) `batch_size` is the global batch, each replica trains on its share with batch norm
synchronised and the gradients summed, and the test split is shared out; --precision computes in
mixed_bfloat16 (float32 variables, the loss in float32).
"""

import contextlib
import dataclasses
import math
import os
import shutil
import time
from typing import Any, Dict, Mapping, Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from core import architectures
from core import files
from core import interrupts
from core import options
from core import specs
from core.errors import ConfigError
import datasets
from eval import heads as heads_lib
from eval import linear_eval
from eval import low_label as low_label_lib
from eval import representation as representation_lib
from eval import results as results_lib
from training import footprint as footprint_lib
from training import run_record
from training import schedules
from training import trainer as trainer_lib

EVALUATION = "fine_tune"
HEAD_LAYER = "pre_logits"   # The end point the new head sits on.
BACKBONE_CHECKPOINT_KEYS = ("backbone", "model")  # Where an export (older ones: "model") keeps it.
PRECISIONS = ("float32", "mixed_bfloat16")  # Those it runs in (no loss scaling).


class _FineTuneConfigMethods:

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.workdir, "checkpoints")


# A field per option of core/options.py's fine-tuning config, then the preprocessing parameters
# of a random-init baseline (or sizes given over an export's), as in LinearEvalConfig.
FineTuneConfig = options.make_config("FineTuneConfig", options.FINE_TUNE, _FineTuneConfigMethods,
                                     __name__, extra=[
    ("preprocess_params", Optional[Dict[str, Any]], None),
])


def config_from_values(values: Mapping[str, Any]) -> "FineTuneConfig":
  """The config of the option values (linear_eval.evaluation_kwargs)."""
  return FineTuneConfig(**linear_eval.evaluation_kwargs(values, options.FINE_TUNE))


def validate_config(config: FineTuneConfig, check_data: bool = True,
                    export_pending: bool = False) -> None:
  """Raises ConfigError naming the field, the value and the valid choices; with `check_data`,
  also for the data (linear_eval.check_probe_data)."""
  linear_eval.validate_source(config, options.FINE_TUNE)
  if config.precision not in PRECISIONS:
    raise ConfigError(f"--precision={config.precision}: fine-tuning runs in "
                      f"{' or '.join(PRECISIONS)} (mixed_float16's loss scaling is not done for "
                      "its two optimizers)")
  try:
    trainer_lib.check_strategy(config.strategy)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  linear_eval.check_sources(config, export_pending, check_data)
  if config.hub_module is not None and not export_pending:
    linear_eval.require_suite_backbone(config.hub_module, "fine-tuning")


def load_backbone(config: FineTuneConfig):
  """(the trainable backbone, the export's info) for the config: the export's weights in a
  backbone rebuilt from its facts, or a random-init one. The info also says `feature_dim`, the
  width of the layer the head sits on."""
  if config.hub_module is not None:
    path = representation_lib.export_dir_of(config.hub_module)
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
      raise ConfigError(f"--hub_module={config.hub_module}: no export there (no "
                        "saved_model.pb); give <pretext workdir>/export or the workdir")
  info = linear_eval.source_info(config)
  spec = config.eval_preprocessing or info.get("eval_preprocessing") or ""
  keras.utils.set_random_seed(config.random_seed)
  # Batch norm over the global batch, as the pretext training has it.
  backbone = representation_lib.backbone_model(info, spec, sync_bn=config.strategy != "default")
  # Built at once, right after seeding (Keras draws initial weights when a layer is built): the
  # random-init backbone of a seed is the one the per-layer evaluation's baseline has. The
  # variables do not depend on the spatial size.
  shape = info.get("input_shape") or (32, 32, 3)
  features = backbone(tf.zeros([1, *shape]), training=False)[HEAD_LAYER]
  info["feature_dim"] = int(features.shape[-1])
  if config.hub_module is not None:
    _read_weights(backbone, info["source"])
  return backbone, info


def _read_weights(backbone: keras.Model, export_dir: str) -> None:
  """The export's backbone weights into `backbone` (every one of its variables, or an error)."""
  prefix = os.path.join(export_dir, "variables", "variables")
  problems = []
  for key in BACKBONE_CHECKPOINT_KEYS:
    try:
      status = tf.train.Checkpoint(**{key: backbone}).read(prefix)
      status.assert_existing_objects_matched()  # Every variable of the backbone was read...
      status.expect_partial()  # ... and the pretext head's are not wanted.
      return
    except (AssertionError, ValueError, tf.errors.OpError) as e:
      problems.append(f"{key}: {str(e).splitlines()[0][:200]}")
  raise ConfigError(f"could not read the backbone's weights from {export_dir} "
                    f"({'; '.join(problems)}); re-export it with this version "
                    "(train_and_eval.py with the same flags and --workdir re-exports)")


def _features(backbone: keras.Model, images: tf.Tensor, training: bool) -> tf.Tensor:
  """pre_logits of images [B,H,W,C], or the mean over the patches of [B,P,h,w,C]."""
  if images.shape.rank == 5:
    num = images.shape[1]
    flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], axis=0))
    features = backbone(flat, training=training)[HEAD_LAYER]
    return tf.reduce_mean(tf.reshape(features, [-1, num, features.shape[-1]]), axis=1)
  return backbone(images, training=training)[HEAD_LAYER]


def footprint(config: FineTuneConfig, info: Mapping[str, Any], replicas: int
              ) -> footprint_lib.Step:
  """The estimate of this fine-tuning (its checks passed) of the backbone `info` describes
  (linear_eval.source_info) on `replicas` devices of one process: a training step at the global
  batch shared out, in --precision, with the optimizer's slots; one checkpoint on disk. A
  ConfigError where the export does not take its training input."""
  data = linear_eval.eval_data(config, info)
  shape = footprint_lib.example_shape(config, config.train_split, True, data.train_spec,
                                      data.preprocess_config)
  linear_eval.check_input_shape(info, data.train_spec, shape)
  width = info.get("filters_factor") or architectures.standard_width(info["architecture"])
  backbone = linear_eval.backbone_footprint(info, data.eval_spec, shape, config.precision,
                                              training=True,
                                              sync_bn=config.strategy != "default")
  examples = config.batch_size / replicas
  images = examples * (shape[0] if len(shape) == 4 else 1)
  return footprint_lib.Step(
      kind="fine-tuning", replicas=replicas, params=backbone.params(width),
      device_bytes=footprint_lib.training_bytes(backbone, width, images, config.optimizer,
                                                config.precision),
      host_bytes=footprint_lib.pipeline_bytes(config.batch_size, 4 * math.prod(shape)),
      disk_bytes=0,  # Its checkpoints are removed once its results are written.
      scratch_bytes=footprint_lib.checkpoint_bytes(backbone.params(width), config.optimizer),
      what=f"fine-tuning {info['architecture']} w{width} ({config.precision}) on "
           f"{footprint_lib.describe_images(examples, shape)} per replica")


def labelled_subset(config: FineTuneConfig) -> Optional[np.ndarray]:
  """Positions of the labelled training examples (None: all), as the low-label probes draw them;
  the training split's labels are read without decoding its images."""
  if not linear_eval.is_low_label(config):
    return None
  labels = datasets.split_labels(config.dataset, config.train_split, config.data_dir)
  return low_label_lib.low_label_indices(labels, config.train_fraction,
                                         config.examples_per_class, config.random_seed)


@dataclasses.dataclass
class Outcome:
  """What fine-tuning made: its results, and the fine-tuned backbone and head."""
  results: Dict[str, Any]
  backbone: keras.Model
  head: keras.layers.Layer


def fine_tune(config: FineTuneConfig, print_fn=logging.info,
              stop: Optional[interrupts.StopOnSignal] = None) -> Outcome:
  """Fine-tunes (resuming from the workdir's checkpoints) and tests; writes nothing but the
  checkpoints. `run_fine_tune` is the evaluation. With `stop`, a signal that asks to stop saves
  a checkpoint of the current step and raises interrupts.Interrupted."""
  start = time.time()
  validate_config(config)
  strategy = trainer_lib.make_strategy(config.strategy)
  if stop is not None:
    stop.install()  # Over the SIGTERM handler of TensorFlow's multi-worker runtime.
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise ConfigError(f"--batch_size={config.batch_size} is the global batch: it must divide "
                      f"by the {replicas} replicas of --strategy={config.strategy}")
  run_record.make_repeatable(config.random_seed, config.deterministic)
  fingerprint = linear_eval.source_fingerprint(config)
  with strategy.scope(), trainer_lib.dtype_policy(config.precision):
    backbone, info = load_backbone(config)
  data = linear_eval.eval_data(config, info)
  if specs.makes_patches(data.train_spec) != specs.makes_patches(data.eval_spec):
    raise ConfigError(f"--preprocessing={data.train_spec!r} and the evaluation preprocessing "
                      f"{data.eval_spec!r} must both cut patches or both not: the backbone is "
                      "trained and tested on the same kind of input")
  num_classes = int(datasets.get_dataset_info(config.dataset, config.data_dir).num_classes)
  indices = labelled_subset(config)
  num_train = (len(indices) if indices is not None else
               datasets.get_num_examples(config.dataset, config.train_split, config.data_dir))
  steps_in_epoch = heads_lib.steps_per_epoch(num_train, config.batch_size)
  total_steps = heads_lib.num_train_steps(config.epochs, steps_in_epoch)

  def optimizer(lr):
    return schedules.make_optimizer(config.optimizer, lr, config.batch_size,
                                    config.lr_scale_batch_size, steps_in_epoch,
                                    config.warmup_epochs, config.decay_epochs,
                                    config.lr_decay_factor, config.lr_schedule, config.epochs)

  with strategy.scope():
    keras.utils.set_random_seed(config.random_seed)
    with trainer_lib.dtype_policy(config.precision):
      head = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="head")
      head.build((None, info["feature_dim"]))
    backbone_opt, head_opt = optimizer(config.backbone_lr or config.lr), optimizer(config.lr)
    backbone_vars, head_vars = backbone.trainable_variables, head.trainable_variables
    backbone_opt.build(backbone_vars)
    head_opt.build(head_vars)
    step = tf.Variable(0, dtype=tf.int64, trainable=False)
  checkpoint = tf.train.Checkpoint(backbone=backbone, head=head, backbone_optimizer=backbone_opt,
                                   head_optimizer=head_opt, step=step)
  scratch = trainer_lib.worker_scratch_dir(config, trainer_lib.worker_id(strategy))
  manager = _checkpoints(config, checkpoint, step, fingerprint, scratch)
  latest = tf.train.latest_checkpoint(config.checkpoint_dir)  # The chief's, on every worker.
  if latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    print_fn(f"restored {latest} at step {int(step.numpy())}")

  def step_fn(images, labels):
    labels = datasets.image_labels(labels)
    with tf.GradientTape() as tape:
      logits = head(_features(backbone, images, True))
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=labels, logits=tf.cast(logits, tf.float32)))
      total = loss + schedules.l2_decay(backbone_vars + head_vars, config.weight_decay)
      # Each replica's mean over its part of the global batch; the replicas' gradients add up.
      scaled = total / replicas
    grads = tape.gradient(scaled, backbone_vars + head_vars)
    backbone_opt.apply_gradients(zip(grads[:len(backbone_vars)], backbone_vars))
    head_opt.apply_gradients(zip(grads[len(backbone_vars):], head_vars))
    return loss / replicas

  @tf.function
  def train_step(iterator):
    batch = next(iterator)
    loss = strategy.run(step_fn, args=(batch["image"], batch["label"]))
    step.assign_add(1)
    return strategy.reduce("SUM", loss, axis=None)

  def dataset_fn(context):
    subset, shard = indices, context
    if indices is not None and context.num_input_pipelines > 1:  # Each pipeline its share.
      subset, shard = indices[context.input_pipeline_id::context.num_input_pipelines], None
    return data.batches(config.train_split, is_training=True, indices=subset,
                        batch_size=context.get_per_replica_batch_size(config.batch_size),
                        input_context=shard)

  print_fn(f"fine-tuning {info.get('task')} {info['architecture']} on {config.dataset}:"
           f"{config.train_split} ({num_train} labelled examples) from step "
           f"{int(step.numpy())} to {total_steps}, {replicas} replica(s)")
  t, last_save, losses = time.time(), time.time(), []
  iterator = iter(strategy.distribute_datasets_from_function(dataset_fn))
  with contextlib.ExitStack() as saving:
    while int(step.numpy()) < total_steps:
      losses.append(float(train_step(iterator)))
      done = int(step.numpy())
      if done % config.log_every_steps == 0 or done == total_steps:
        print_fn(f"step {done}/{total_steps} loss "
                 f"{np.mean(losses[-config.log_every_steps:]):.4f} | {time.time() - t:.0f}s")
      if not np.isfinite(losses[-1]):
        raise FloatingPointError(f"fine-tuning diverged at step {done} (loss {losses[-1]}); "
                                 "lower --lr / --backbone_lr")
      secs = config.save_checkpoints_secs
      if (secs is not None and time.time() - last_save >= secs) or done == total_steps:
        manager.save(checkpoint_number=done)
        last_save = time.time()
      if stop is not None and len(losses) == 1:
        saving.enter_context(stop.saving())  # There is progress to save from now on.
      if stop is not None and stop.requested is not None and done < total_steps:
        saved = manager.save(checkpoint_number=done)
        raise interrupts.Interrupted(stop.requested,
                                     f"at fine-tuning step {done} of {total_steps}: saved {saved}")
  training_s = time.time() - t

  if scratch:
    shutil.rmtree(scratch, ignore_errors=True)
  t = time.time()
  metrics = _test(config, data, backbone, head, strategy)
  layers = {HEAD_LAYER: dict(dim=int(head.kernel.shape[0]), **metrics)}
  source = dict(info, hub_module=info.get("source"), eval_preprocessing=data.eval_spec,
                fingerprint=fingerprint)
  dataset = dict(name=config.dataset, train_split=config.train_split,
                 val_split=config.val_split, num_classes=num_classes,
                 num_train_examples=num_train, num_val_examples=metrics.pop("num_examples"))
  layers[HEAD_LAYER].pop("num_examples", None)
  low_label = None
  if indices is not None:
    low_label = dict(train_fraction=config.train_fraction,
                     examples_per_class=config.examples_per_class, seed=config.random_seed,
                     num_train_examples=num_train)
  times = dict(training_s=training_s, test_s=time.time() - t, total_s=time.time() - start)
  results = results_lib.build_results(
      config.to_dict(), source, dataset, [HEAD_LAYER], layers, times, low_label,
      evaluation=EVALUATION,
      run=run_record.record(config.random_seed, deterministic=config.deterministic))
  return Outcome(results, backbone, head)


def _checkpoints(config: FineTuneConfig, checkpoint, step, fingerprint: Optional[str],
                 scratch: Optional[str] = None) -> tf.train.CheckpointManager:
  """The workdir's fine-tuning checkpoints; those of another config or backbone (they are
  removed once results are written, so they hold no result) are removed first. `scratch`: a
  multi-worker run's other workers save there (saving is collective) and keep nothing."""
  if scratch:
    return tf.train.CheckpointManager(checkpoint, os.path.join(scratch, "checkpoints"),
                                      max_to_keep=1, step_counter=step)
  directory = config.checkpoint_dir
  stamp = os.path.join(directory, files.CONFIG_FILE)
  wanted = dict(results_lib.comparable_config(config), backbone_fingerprint=fingerprint)
  if os.path.isdir(directory) and (files.read_json(stamp) or {}) != wanted:
    logging.info("%s holds checkpoints of another fine-tuning config or backbone; starting "
                 "afresh", directory)
    shutil.rmtree(directory)
  os.makedirs(directory, exist_ok=True)
  files.write_json_atomic(stamp, wanted)
  return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1, step_counter=step)


def _test(config, data: linear_eval.EvalData, backbone, head,
          strategy: Optional[tf.distribute.Strategy] = None) -> Dict[str, float]:
  """top1, top5 and mean loss over the whole test split (batch norm in inference mode), each
  replica on its part of every batch."""
  strategy = strategy or tf.distribute.get_strategy()

  def step_fn(images, labels):
    labels = datasets.image_labels(labels)
    logits = tf.cast(head(_features(backbone, images, False)), tf.float32)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    k = min(5, logits.shape[-1])
    return tf.stack([
        tf.reduce_sum(loss),
        tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)),
        tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32)),
        tf.cast(tf.shape(labels)[0], tf.float32)])

  @tf.function
  def test_step(batch):
    sums = strategy.run(step_fn, args=(batch["image"], batch["label"]))
    return strategy.reduce("SUM", sums, axis=None)

  batches = strategy.distribute_datasets_from_function(  # eval_batch_size per replica.
      lambda context: data.batches(config.val_split, is_training=False, input_context=context))
  sums = np.zeros(4)
  for batch in batches:
    sums += test_step(batch).numpy()
  loss, top1, top5 = sums[:3] / max(sums[3], 1)
  return dict(top1=top1, top5=top5, loss=loss, num_examples=int(sums[3]))


def run_fine_tune(config: FineTuneConfig, print_fn=logging.info,
                  stop: Optional[interrupts.StopOnSignal] = None) -> Dict[str, Any]:
  """The evaluation: results.json in the workdir (skipped when results of the same config and
  backbone are there, unless `force`; those of another are moved aside)."""
  validate_config(config)
  reused = results_lib.skip_or_set_aside(config.workdir, config,
                                         linear_eval.source_fingerprint(config), print_fn)
  if reused is not None:
    return reused
  outcome = fine_tune(config, print_fn, stop)
  results_lib.write_results(config.workdir, outcome.results)
  shutil.rmtree(config.checkpoint_dir, ignore_errors=True)
  return outcome.results
