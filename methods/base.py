"""What every method's model_fn returns, and helpers that several methods share.

A method module exposes (the preprocessing ops that make its labels are core/specs.PRETEXT_OPS):
  validate(config): raises core.errors.ConfigError for settings the method cannot run with.
  build_model(config, image_shape, num_classes): the Keras model (backbone + head), built for
    per-example input of `image_shape` as the data pipeline yields it (e.g. [4,H,W,C] for rotation).
  model_fn(model, batch, mode, config) -> ModelSpec, mode one of MODES.
  serving_input_shape(image_shape): the [H,W,C] of one image as the backbone sees it.
  USES_LABELS (optional, default False): True where it trains on the dataset's labels, which
    then need at least two classes.
  check_replicas(config, replicas) (optional): raises core.errors.ConfigError where the method
    cannot split its batch over that many replicas (before training starts).
  PRETEXT_METRIC (optional, default "accuracy"): the metric of its own that tells how well it does
    its task, the one the reports show (e.g. BYOL's "cosine").
  check_input_shape(config, image_shape) (optional): raises core.errors.ConfigError where its
    model cannot be built for the per-example shape the pipeline makes (a dense decoder's
    sizes); run with the checks before any work (training/validation.check_input_side).

A method whose model holds state that the gradient does not train (a teacher network that follows
the online one as a moving average, a queue of past embeddings) also exposes:
  TEACHER: its TeacherDefaults (the paper's momentum and its schedule); its build_model returns a
    TeacherModel (or a subclass that adds such state as non-trainable weights).
  after_step(model, updates, progress, config) (also without a teacher, e.g. SwAV's prototypes
    put back on the unit sphere): called once after every optimiser step, outside
    the replicas (in the strategy's cross-replica context), with `updates` the ModelSpec's updates
    of every replica concatenated in replica order (the global batch's) and `progress` the share
    of training done before that step (a float32 scalar in [0, 1), for schedules). Whatever it
    changes lives in the model's variables, so checkpoints, resumption and every strategy carry it
    as they carry the weights; exports serve `exported_model`.
"""

import dataclasses
import math
from typing import Dict, Optional

import keras
import tensorflow as tf

from core import architectures
from core import options
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
  updates: values of the batch that the method's after_step needs (e.g. MoCo's keys), each with
    the batch's rows first; no gradient flows through them. Only in TRAIN mode.
  """
  loss: tf.Tensor
  metrics: Dict[str, tf.Tensor]
  predictions: Dict[str, tf.Tensor]
  end_points: Dict[str, tf.Tensor]
  updates: Dict[str, tf.Tensor] = dataclasses.field(default_factory=dict)


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


def build_projected_model(config, image_shape, hidden_layers: int, last_bn: bool,
                          sync_bn: Optional[bool] = None, name: Optional[str] = None,
                          cls=ProjectedModel, head=None, **model_kwargs) -> ProjectedModel:
  """A `cls` (a ProjectedModel, given `model_kwargs`) of the config's backbone plus a
  ProjectionHead on its pre_logits: `hidden_layers` of --proj_hidden_dim units (default: the
  pre_logits' width), then --proj_out_dim; built for the per-example views [2,H,W,C] of
  'simclr_views' (SimCLR, Barlow Twins, BYOL, MoCo, SwAV, DINO). `sync_bn`: batch norm across
  replicas (default: under a multi-replica strategy, as every backbone). `head`: another head,
  `head(pre_logits width, sync_bn)` -> a layer (DINO's)."""
  if len(image_shape) != 4 or image_shape[0] != NUM_VIEWS:
    raise ValueError(f"{config.task} expects per-example views [2,H,W,C] from 'simclr_views', "
                     f"got {list(image_shape)}")
  kwargs = backbone_kwargs(config)
  if sync_bn is not None:
    kwargs["sync_bn"] = sync_bn
  backbone = models.get_model(config.architecture, num_classes=None, **kwargs)
  features = backbone(tf.zeros([1, *image_shape[1:]]), training=False)["pre_logits"]
  if head is None:
    projection = ProjectionHead(projection_widths(config, int(features.shape[-1]), hidden_layers),
                                last_bn, sync_bn=kwargs["sync_bn"])
  else:
    projection = head(int(features.shape[-1]), kwargs["sync_bn"])
  model = cls(backbone, projection, name=name or config.task, **model_kwargs)
  model(tf.zeros([1, *image_shape[1:]]), training=False)
  return model


def projection_widths(config, features: int, hidden_layers: int):
  """The widths of a projection (or prediction) head on `features` inputs: `hidden_layers` of
  --proj_hidden_dim (default: `features`), then --proj_out_dim."""
  return [config.proj_hidden_dim or features] * hidden_layers + [config.proj_out_dim]


@dataclasses.dataclass(frozen=True)
class TeacherDefaults:
  """A teacher method's paper settings: the momentum of the teacher's moving average, and its
  schedule (constant, or cosine: from `momentum` at the start to 1 at the end, BYOL's)."""
  momentum: float
  schedule: str


class TeacherModel(keras.Model):
  """An online network that the gradient trains, and a teacher of the same shape that follows it
  as a moving average of its trainable weights (BYOL's target, MoCo's key encoder); both are
  ProjectedModels. `model(images)` is the online network's; `backbone` its backbone. The
  teacher starts as a copy of the online network; it computes batch statistics in training, as
  the papers' teachers do, and its batch norms keep their own moving statistics."""

  def __init__(self, online: ProjectedModel, teacher: ProjectedModel, name: str, **kwargs):
    super().__init__(name=name, **kwargs)
    self.online = online
    self.teacher = teacher
    for t, o in zip(teacher.weights, online.weights, strict=True):
      if t.shape != o.shape:
        raise ValueError(f"the teacher's {t.path} {t.shape} differs from the online {o.path} "
                         f"{o.shape}")
      t.assign(o)

  @property
  def backbone(self):
    return self.online.backbone

  def build(self, input_shape):
    del input_shape  # Both networks are built.

  def call(self, images, training=None):
    return self.online(images, training=training)

  def follow(self, momentum: tf.Tensor) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * online, for every trainable weight."""
    for t, o in zip(self.teacher.trainable_weights, self.online.trainable_weights, strict=True):
      t.assign(momentum * t + (1.0 - momentum) * o)


def build_teacher_model(config, image_shape, hidden_layers: int, last_bn: bool,
                        cls=TeacherModel, sync_bn: Optional[bool] = None, head=None, **kwargs):
  """A `cls` (a TeacherModel) of two ProjectedModels of the same shape, `online` and `teacher`
  (build_projected_model's, with its `head`), the teacher a copy of the online network."""
  online, teacher = (build_projected_model(config, image_shape, hidden_layers, last_bn, sync_bn,
                                           name=name, head=head)
                     for name in ("online", "teacher"))
  model = cls(online, teacher, name=config.task, **kwargs)
  model(tf.zeros([1, *image_shape[1:]]), training=False)
  return model


def teacher_schedule(config, defaults: TeacherDefaults) -> str:
  """--teacher_momentum_schedule, or the method's."""
  return config.teacher_momentum_schedule or defaults.schedule


def teacher_momentum(config, defaults: TeacherDefaults, progress: tf.Tensor) -> tf.Tensor:
  """The teacher's momentum after `progress` (share of training done) under --teacher_momentum
  and --teacher_momentum_schedule (each defaulting to the method's `defaults`)."""
  start = defaults.momentum if config.teacher_momentum is None else config.teacher_momentum
  start = tf.constant(start, tf.float32)
  if teacher_schedule(config, defaults) == options.TEACHER_SCHEDULES[0]:  # constant
    return start
  return 1.0 - (1.0 - start) * (tf.cos(math.pi * tf.cast(progress, tf.float32)) + 1.0) / 2.0


def trained_variables(model) -> list:
  """The variables the gradient trains (and weight decay applies to): the model's trainable
  ones less its teacher's, which the method's after_step updates."""
  teacher = getattr(model, "teacher", None)
  if teacher is None:
    return model.trainable_variables
  skip = {id(v) for v in teacher.variables}
  return [v for v in model.trainable_variables if id(v) not in skip]


def exported_model(model, teacher: bool = False):
  """The network an export serves: the model itself, or a TeacherModel's online network (its
  teacher's with `teacher`, --export_teacher)."""
  if isinstance(model, TeacherModel):
    return model.teacher if teacher else model.online
  if teacher:
    raise ValueError(f"{model.name} has no teacher to export")
  return model


def replica_sum(local: tf.Tensor) -> tf.Tensor:
  """The sum of `local` over the replicas (itself on one); the same on every replica."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return local
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, local)


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


def swap_views(rows: tf.Tensor) -> tf.Tensor:
  """Rows [2n, ...] in `flatten_stacked` order of two views (2i, 2i+1: image i), each image's two
  rows exchanged: what each view is compared with (BYOL's targets, SwAV's codes)."""
  views = tf.reshape(rows, tf.concat([[-1, NUM_VIEWS], tf.shape(rows)[1:]], 0))
  return tf.reshape(views[:, ::-1], tf.shape(rows))


# The peak-to-peak of the values a reconstruction is measured on: [-1, 1] ('-1_to_1').
PEAK_TO_PEAK = 2.0


def psnr(mse: tf.Tensor) -> tf.Tensor:
  """The peak signal-to-noise ratio in dB of a mean squared error of values in [-1, 1]:
  10 log10(PEAK_TO_PEAK^2 / mse)."""
  return 10.0 * tf.math.log(PEAK_TO_PEAK ** 2 / tf.maximum(mse, 1e-10)) / tf.math.log(10.0)


def predict_spec(predictions: Dict[str, tf.Tensor], end_points: Dict[str, tf.Tensor]
                 ) -> ModelSpec:
  """The ModelSpec of PREDICT mode: no loss, no metrics."""
  return ModelSpec(loss=None, metrics={}, predictions=predictions, end_points=end_points)


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


def embed_views(model, batch, mode: str):
  """The start of a model_fn on the two views of 'simclr_views' (SimCLR, SwAV, DINO): (end points,
  L2-normalised embeddings [2B, D] in `flatten_stacked` order (2i, 2i+1: image i), the
  predictions, and in PREDICT mode its whole ModelSpec, else None)."""
  check_mode(mode)
  end_points, embeddings = embed_stacked(model, batch["image"], mode)
  predictions = {"embeddings": embeddings}
  predicted = predict_spec(predictions, end_points) if mode == PREDICT else None
  return end_points, embeddings, predictions, predicted


def single_serving_input_shape(image_shape):
  """For single images per example ([H,W,C]): the image as it is."""
  return tuple(image_shape)


def require_single_images(image_shape, who: str) -> None:
  """ValueError unless the per-example shape is a single image [H,W,C] (`who`: what takes it)."""
  if len(image_shape) != 3:
    raise ValueError(f"{who} takes single images [H,W,C], got per-example shape "
                     f"{list(image_shape)}; remove ops that stack copies, views or patches from "
                     f"--preprocessing")


def stacked_serving_input_shape(image_shape):
  """For inputs stacked per example ([P,H,W,C]: rotations, patches, copies): one of them."""
  return tuple(image_shape[1:])


def require_op(config, op: str, example: str) -> None:
  """ConfigError unless --preprocessing has `op`, the op that makes the method's input."""
  if op not in specs.parse_spec(config.preprocessing):
    raise ConfigError(f"--task={config.task} needs the {op!r} op in --preprocessing, got "
                      f"{config.preprocessing!r} (e.g. {example!r})")


def require_two_images(config, why: str = "for negatives") -> None:
  """ConfigError unless a batch holds at least 2 images (`why`: what the others are for)."""
  if config.batch_size < 2:
    raise ConfigError(f"--batch_size={config.batch_size}: {config.task} needs at least 2 images "
                      f"per batch {why}")


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
    return predict_spec(predictions, end_points)
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
  return dict(filters_factor=config.filters_factor, zero_init_residual=config.zero_init_residual,
              sync_bn=config.strategy != "default",
              **{name: getattr(config, name) for name in architectures.MODEL_SETTINGS})
