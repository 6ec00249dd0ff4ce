"""MoCo v2 (He et al. 2020; Chen et al. 2020, "Improved baselines with momentum contrastive
learning"): a query encoder learns to pick, among a queue of past keys, the key that a slowly
moving key encoder made of another view of the same image.

The views are SimCLR's (`simclr_views`, [B,2,H,W,C]): the first is the query's, the second the
key's. The online (query) network is the backbone and an MLP head (base.ProjectionHead: dense -
batch norm - ReLU - dense, the paper's 2048-128, here --proj_hidden_dim and --proj_out_dim; the
paper's head has biases and no batch norm); the key encoder (the teacher) has the same shape and
follows the online network as an exponential moving average of momentum --teacher_momentum
(0.999, constant), updated after every optimiser step (`after_step`), before the next keys are
made, as in the paper's code. With q the L2-normalised query of an image, k+ its key (no
gradient) and k_1..k_K the queue (--moco_queue_size keys of earlier batches, oldest first out),

  L = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.k_j / t)) ),   t = --temperature (0.2),

averaged over the images. The queue is read before the batch's keys join it, so an image's
positive is never among its negatives; after the step the global batch's keys (of every replica,
in replica order) replace the oldest ones. The queue starts as random unit vectors.

Batch norm: shuffled (MoCo's). Each replica normalises its batch in --shuffle_bn_groups groups,
as the paper's 8 GPUs each normalised their own 32 images, and the keys are made from a shuffled
order and put back, so that a query and its key are never normalised with the same statistics
(else the model tells the batch's keys from the queue's by their statistics, and the task leaks).
Statistics are not synchronised across replicas. The export serves the online backbone and head
(`logits`), or with --export_teacher the key encoder's.

Metrics: `loss`; `accuracy`, the share of queries whose most similar key among the K + 1 is their
own (chance 1/(K+1)), the pretext accuracy.
"""

import tensorflow as tf

from core.errors import ConfigError
from methods import base

TEACHER = base.TeacherDefaults(momentum=0.999, schedule="constant")


def _unit_rows(shape, dtype=None):
  return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or tf.float32), axis=1)


class MoCoModel(base.TeacherModel):
  """The query network and the key encoder (base.TeacherModel), and the queue: `queue` [K, D]
  unit vectors, `queue_pointer` the row where the next batch's keys go (the oldest)."""

  def __init__(self, online, teacher, name: str, queue_size: int):
    super().__init__(online, teacher, name)
    dim = self.online.projection.compute_output_shape((None, 1))[-1]
    self.queue = self.add_weight(shape=(queue_size, dim), initializer=_unit_rows,
                                 trainable=False, name="queue")
    self.queue_pointer = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                         trainable=False, name="queue_pointer")


def validate(config) -> None:
  base.require_op(config, "simclr_views", "resize,simclr_views,-1_to_1")
  groups = config.shuffle_bn_groups
  if config.batch_size % groups or config.batch_size // groups < 2:
    raise ConfigError(f"--shuffle_bn_groups={groups} must divide --batch_size="
                      f"{config.batch_size} into groups of at least 2 images (their batch "
                      "statistics)")
  if config.moco_queue_size % config.batch_size:
    raise ConfigError(f"--moco_queue_size={config.moco_queue_size} must be a multiple of "
                      f"--batch_size={config.batch_size} (each step replaces a batch of keys)")


def check_replicas(config, replicas: int) -> None:
  """Each replica's share of the batch must split into --shuffle_bn_groups groups of 2 or more."""
  local = config.batch_size // replicas
  if local % config.shuffle_bn_groups or local // config.shuffle_bn_groups < 2:
    raise ConfigError(f"--shuffle_bn_groups={config.shuffle_bn_groups} must divide each of the "
                      f"{replicas} replicas' {local} images into groups of at least 2 (the "
                      "shuffle is within a replica); use fewer groups or a larger --batch_size")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  return base.build_teacher_model(config, image_shape, hidden_layers=1, last_bn=False,
                                  cls=MoCoModel, sync_bn=False, queue_size=config.moco_queue_size)


serving_input_shape = base.stacked_serving_input_shape


def in_groups(network, images: tf.Tensor, groups: int, training: bool):
  """`network`'s end points of `images`, run as `groups` consecutive equal parts, each normalised
  with its own batch statistics."""
  if groups == 1:
    return network(images, training=training)
  rows = images.shape[0]
  if rows is not None and rows % groups:
    raise ValueError(f"--shuffle_bn_groups={groups} does not divide the {rows} images of a "
                     "replica's batch; use a --batch_size that each replica's share of divides")
  parts = tf.reshape(images, tf.concat([[groups, -1], tf.shape(images)[1:]], axis=0))
  outs = [network(parts[g], training=training) for g in range(groups)]
  return {k: tf.concat([out[k] for out in outs], 0) for k in outs[0]}


def info_nce(queries: tf.Tensor, keys: tf.Tensor, queue: tf.Tensor, temperature: float):
  """(per-query loss [n], per-query hit [n]) of L2-normalised `queries` and their `keys` [n, D]
  against the `queue` [K, D] of negatives."""
  positive = tf.reduce_sum(queries * keys, axis=1, keepdims=True)
  logits = tf.concat([positive, tf.matmul(queries, queue, transpose_b=True)], 1) / temperature
  own = tf.zeros(tf.shape(queries)[:1], tf.int32)
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=own, logits=logits)
  return loss, tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), own), tf.float32)


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  training = mode == base.TRAIN
  groups = config.shuffle_bn_groups if training else 1  # Evaluation: the moving statistics.
  query_views, key_views = batch["image"][:, 0], batch["image"][:, 1]
  if mode == base.PREDICT:
    end_points = model(query_views, training=False)
    embeddings = tf.math.l2_normalize(tf.cast(end_points["logits"], tf.float32), axis=1)
    return base.predict_spec({"embeddings": embeddings}, end_points)
  end_points = in_groups(model.online, query_views, groups, training)
  queries = tf.math.l2_normalize(tf.cast(end_points["logits"], tf.float32), axis=1)
  order = tf.argsort(tf.random.uniform(tf.shape(key_views)[:1])) if training else \
      tf.range(tf.shape(key_views)[0])
  shuffled = in_groups(model.teacher, tf.gather(key_views, order), groups, training)["logits"]
  keys = tf.stop_gradient(tf.math.l2_normalize(tf.cast(
      tf.scatter_nd(order[:, None], shuffled, tf.shape(shuffled)), tf.float32), axis=1))
  loss, hits = info_nce(queries, keys, tf.cast(model.queue, tf.float32), config.temperature)
  return base.ModelSpec(loss=tf.reduce_mean(loss), metrics={"loss": loss, "accuracy": hits},
                        predictions={"embeddings": queries}, end_points=end_points,
                        updates={"keys": keys} if training else {})


def enqueue(model, keys: tf.Tensor) -> None:
  """The oldest len(keys) rows of the queue replaced by `keys`, in order."""
  size = tf.shape(model.queue)[0]
  pointer = tf.convert_to_tensor(model.queue_pointer)
  rows = (pointer + tf.range(tf.shape(keys)[0])) % size
  model.queue.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(model.queue),
                                                 rows[:, None], keys))
  model.queue_pointer.assign((pointer + tf.shape(keys)[0]) % size)


def after_step(model, updates, progress, config) -> None:
  model.follow(base.teacher_momentum(config, TEACHER, progress))
  enqueue(model, tf.cast(updates["keys"], model.queue.dtype))

