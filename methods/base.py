"""What every method's model_fn returns, and helpers that several methods share.

A method module exposes (the preprocessing ops that make its labels are core/specs.PRETEXT_OPS):
  validate(config): raises core.errors.ConfigError for settings the method cannot run with.
  build_model(config, image_shape, num_classes): the Keras model (backbone + head), built for
    per-example input of `image_shape` as the data pipeline yields it (e.g. [4,H,W,C] for rotation).
  model_fn(model, batch, mode, config) -> ModelSpec, mode one of MODES.
  serving_input_shape(image_shape): the [H,W,C] of one image as the backbone sees it.
  USES_LABELS (optional, default False): True where it trains on the dataset's labels, which
    then need at least two classes.
"""

import dataclasses
from typing import Dict

import keras
import tensorflow as tf

from core import specs
from core.errors import ConfigError
from datasets.copies import NUM_VIEWS
import models
from models import common

TRAIN, EVAL, PREDICT = "train", "eval", "predict"
MODES = (TRAIN, EVAL, PREDICT)


@dataclasses.dataclass
class ModelSpec:
  """One batch through a method.

  loss: scalar training loss of the batch (before weight decay); None in PREDICT mode.
  metrics: per-example values, each [N]; the trainer averages them (over the log interval in
    training, over the whole split in evaluation). Includes the per-example loss where defined.
  predictions: model outputs for the batch (e.g. logits).
  end_points: the backbone's end points for the batch.
  """
  loss: tf.Tensor
  metrics: Dict[str, tf.Tensor]
  predictions: Dict[str, tf.Tensor]
  end_points: Dict[str, tf.Tensor]


def backbone_of(model):
  """The backbone inside a method's model: `model.backbone` where the method wraps one in a model
  with its own head (patch methods, SimCLR), else the model itself."""
  return getattr(model, "backbone", model)


class ProjectionHead(keras.layers.Layer):
  """For each width of `widths` but the last: dense - batch norm - ReLU; then dense to the last
  width; no biases. `last_bn`: a batch norm without offset after it (SimCLR v2's head). Its
  layers are `fc1`, `bn1`, `fc2`, ... (names the checkpoints keep)."""

  def __init__(self, widths, last_bn: bool, bn_momentum: float = 0.9, sync_bn: bool = False,
               name: str = "projection"):
    super().__init__(name=name)
    self.depth = len(widths)
    for i, width in enumerate(widths, 1):
      setattr(self, f"fc{i}", keras.layers.Dense(width, use_bias=False, name=f"fc{i}"))
      if i < self.depth or last_bn:
        setattr(self, f"bn{i}", common.batch_norm(f"bn{i}", bn_momentum, sync_bn,
                                                  center=i < self.depth))

  def _stage(self, i):
    return getattr(self, f"fc{i}"), getattr(self, f"bn{i}", None)

  def build(self, input_shape):
    common.build_sequence(input_shape, *[l for i in range(1, self.depth + 1)
                                         for l in self._stage(i)])

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, *[self._stage(i)[0]
                                              for i in range(1, self.depth + 1)])

  def call(self, x, training=None):
    for i in range(1, self.depth + 1):
      dense, norm = self._stage(i)
      x = dense(x)
      if norm is not None:
        x = norm(x, training=training)
      if i < self.depth:
        x = keras.ops.relu(x)
    return x


class ProjectedModel(keras.Model):
  """A backbone without a head plus a projection head (SimCLR, Barlow Twins); `model(images)`
  returns the backbone's end points and `logits` = the projection of its pre_logits (the
  embedding the loss compares)."""

  def __init__(self, backbone: keras.Model, projection: keras.layers.Layer, name: str):
    super().__init__(name=name)
    self.backbone = backbone
    self.projection = projection

  def build(self, input_shape):
    if not self.backbone.built:
      self.backbone.build(tuple(input_shape))

  def call(self, images, training=None):
    end_points = dict(self.backbone(images, training=training))
    end_points["logits"] = self.projection(end_points["pre_logits"], training=training)
    return end_points


def build_projected_model(config, image_shape, hidden_layers: int, last_bn: bool
                          ) -> ProjectedModel:
  """The config's backbone plus a ProjectionHead on its pre_logits: `hidden_layers` of
  --proj_hidden_dim units (default: the pre_logits' width), then --proj_out_dim; built for the
  per-example views [2,H,W,C] of 'simclr_views' (SimCLR, Barlow Twins)."""
  if len(image_shape) != 4 or image_shape[0] != NUM_VIEWS:
    raise ValueError(f"{config.task} expects per-example views [2,H,W,C] from 'simclr_views', "
                     f"got {list(image_shape)}")
  kwargs = backbone_kwargs(config)
  backbone = models.get_model(config.architecture, num_classes=None, **kwargs)
  features = backbone(tf.zeros([1, *image_shape[1:]]), training=False)["pre_logits"]
  hidden = config.proj_hidden_dim or int(features.shape[-1])
  head = ProjectionHead([hidden] * hidden_layers + [config.proj_out_dim], last_bn,
                        sync_bn=kwargs["sync_bn"])
  model = ProjectedModel(backbone, head, name=config.task)
  model(tf.zeros([1, *image_shape[1:]]), training=False)
  return model


def global_batch(local: tf.Tensor):
  """(the rows of every replica, concatenated in replica order; the offset of this replica's
  rows). Differentiable: each replica's rows get the gradients of every replica's loss."""
  ctx = tf.distribute.get_replica_context()
  replicas = ctx.num_replicas_in_sync if ctx is not None else 1
  if replicas == 1:
    return local, 0
  replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
  rows = tf.shape(local)[0]
  placed = tf.scatter_nd([[replica]], local[None], tf.concat([[replicas], tf.shape(local)], 0))
  everything = ctx.all_reduce(tf.distribute.ReduceOp.SUM, placed)
  return tf.reshape(everything, [-1, local.shape[-1]]), replica * rows


def flatten_stacked(images: tf.Tensor) -> tf.Tensor:
  """Per-example stacks [B,P,H,W,C] (rotations, patches, copies, views) as one batch
  [B*P,H,W,C] in the order the backbone sees them: rows b*P .. b*P+P-1 are example b's."""
  flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], axis=0))
  flat.set_shape([None, *images.shape[2:]])
  return flat


def embed_stacked(model, images: tf.Tensor, mode: str):
  """(end points, L2-normalised `logits` [B*P,D]) of stacked copies or views (exemplar,
  SimCLR), each row one copy in `flatten_stacked` order."""
  end_points = model(flatten_stacked(images), training=mode == TRAIN)
  return end_points, tf.math.l2_normalize(tf.cast(end_points["logits"], tf.float32), axis=1)


def stacked_serving_input_shape(image_shape):
  """For inputs stacked per example ([P,H,W,C]: rotations, patches, copies): one of them."""
  return tuple(image_shape[1:])


def require_op(config, op: str, example: str) -> None:
  """ConfigError unless --preprocessing has `op`, the op that makes the method's input."""
  if op not in specs.parse_spec(config.preprocessing):
    raise ConfigError(f"--task={config.task} needs the {op!r} op in --preprocessing, got "
                      f"{config.preprocessing!r} (e.g. {example!r})")


def require_negatives(config) -> None:
  """ConfigError unless a batch holds at least 2 images: other images are the negatives."""
  if config.batch_size < 2:
    raise ConfigError(f"--batch_size={config.batch_size}: {config.task} needs at least 2 images "
                      "per batch for negatives")


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")


def classification_spec(logits: tf.Tensor, labels: tf.Tensor, mode: str,
                        end_points: Dict[str, tf.Tensor]) -> ModelSpec:
  """Cross-entropy loss, top-1 and top-5 accuracy for `logits` [N,K] and int `labels` [N]."""
  check_mode(mode)
  logits = tf.cast(logits, tf.float32)
  predictions = {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}
  if mode == PREDICT:
    return ModelSpec(loss=None, metrics={}, predictions=predictions, end_points=end_points)
  labels = tf.cast(labels, tf.int32)
  per_example_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  k = min(5, logits.shape[-1])
  metrics = {
      "loss": per_example_loss,
      "accuracy": tf.cast(tf.equal(predictions["classes"], labels), tf.float32),
      f"top{k}": tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32),
  }
  if k == 1 or k == logits.shape[-1]:
    del metrics[f"top{k}"]
  return ModelSpec(loss=tf.reduce_mean(per_example_loss), metrics=metrics,
                   predictions=predictions, end_points=end_points)


def backbone_kwargs(config) -> dict:
  """The backbone settings that come from the config."""
  return dict(filters_factor=config.filters_factor, mode=config.mode, last_relu=config.last_relu,
              zero_init_residual=config.zero_init_residual,
              sync_bn=config.strategy != "default")
