"""DINO (Caron et al. 2021): self-distillation without labels. A student network is trained to
give the same distribution over --dino_prototypes outputs as a teacher, a moving average of the
student (base.TeacherModel, momentum 0.996 rising to 1 on a cosine), across views of an image.

The views are SimCLR's (`simclr_views`: the two "global" views [B,2,H,W,C]) and, with
--local_crops, multi-crop's small views (`local_views` [B,N,h,w,C]). Student and teacher are the
backbone and DINO's head (`DINOHead`: three dense layers with GELU, --proj_hidden_dim, to a
--proj_out_dim bottleneck, L2-normalised, then a weight-normalised dense layer without bias to
--dino_prototypes outputs, its weights' norm fixed to 1). The teacher sees the two views only;
the student sees every view. With teacher outputs t_v centred by `center` c and sharpened by the
teacher temperature T_t, and student outputs s_w at the student temperature T_s (--temperature),

  q_v = softmax((t_v - c) / T_t),   log p_w = log_softmax(s_w / T_s),
  L = 1 / (2 (N + 1)) sum_{v = 1, 2} sum_{w != v} -sum_k q_v,k log p_w,k

over the 2 (N + 1) pairs of a view v of the teacher and another view w of the student (the
paper's code: each pair's cross-entropy averaged over the batch, then over the pairs). The
gradient flows to the student only. After every optimiser step (`after_step`), the teacher follows
the student, and the centre follows the mean of the teacher's outputs over the global batch
(every replica's, gathered): c <- m c + (1 - m) mean_v,i t_v,i (--center_momentum m, 0.9).
Centring keeps one output from dominating, sharpening keeps the outputs from spreading evenly:
between them the student cannot collapse. The teacher temperature rises linearly from
--warmup_teacher_temperature to --teacher_temperature over --warmup_teacher_temperature_epochs
(the paper's 0.04 to 0.07 over 30 epochs); `after_step` sets the next step's.

Metrics: `loss`; `accuracy`, the share of (view, other view) pairs of the two where the student's
most probable output is the teacher's (chance 1 / K); `teacher_entropy`, the mean entropy of the
teacher's distributions in nats (0: one output per image, ln K: spread evenly, the two ways to
collapse). The export serves the student's backbone; the paper evaluates the teacher's
(--export_teacher, set in configs/dino/imagenet.flags).

Not implemented: the paper's freezing of the last layer in the first epoch and its weight decay
rising from 0.04 to 0.4 (the suite's weight decay is constant).
"""

import keras
import tensorflow as tf

from datasets import LOCAL_VIEWS
from datasets.copies import NUM_VIEWS
from methods import base
from models import common

TEACHER = base.TeacherDefaults(momentum=0.996, schedule="cosine")
TAKES_LOCAL_VIEWS = True
HEAD_LAYERS = 3


class DINOHead(keras.layers.Layer):
  """Dense - GELU - dense - GELU - dense to the bottleneck (with biases), L2-normalised, then a
  dense layer without bias whose columns are normalised to unit length in the forward pass (weight
  normalisation with the norm fixed to 1)."""

  def __init__(self, hidden: int, bottleneck: int, prototypes: int, name: str = "projection"):
    super().__init__(name=name)
    self.prototypes = prototypes
    for i, width in enumerate([hidden] * (HEAD_LAYERS - 1) + [bottleneck], 1):
      setattr(self, f"fc{i}", keras.layers.Dense(
          width, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
          name=f"fc{i}"))
    self.last = keras.layers.Dense(prototypes, use_bias=False, name="last")

  def _dense_layers(self):
    return [getattr(self, f"fc{i}") for i in range(1, HEAD_LAYERS + 1)]

  def build(self, input_shape):
    common.build_sequence(input_shape, *self._dense_layers(), self.last)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.prototypes,)

  def call(self, x, training=None):
    del training
    layers = self._dense_layers()
    for layer in layers[:-1]:
      x = keras.ops.gelu(layer(x), approximate=False)
    x = tf.math.l2_normalize(layers[-1](x), axis=-1)
    return tf.matmul(x, tf.math.l2_normalize(tf.cast(self.last.kernel, x.dtype), axis=0))


class DINOModel(base.TeacherModel):
  """Student (`online`) and teacher (base.TeacherModel), the `center` [K] of the teacher's
  outputs and the teacher's current temperature (non-trainable weights: in the checkpoints)."""

  def __init__(self, online, teacher, name: str, prototypes: int, temperature: float):
    super().__init__(online, teacher, name)
    self.center = self.add_weight(shape=(prototypes,), initializer="zeros", trainable=False,
                                  name="center")
    self.teacher_temperature = self.add_weight(
        shape=(), initializer=keras.initializers.Constant(temperature), trainable=False,
        name="teacher_temperature")


def validate(config) -> None:
  base.require_op(config, "simclr_views", "resize,simclr_views,-1_to_1")
  base.require_two_images(config, "(the centre is a mean over the batch)")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.

  def head(features, sync_bn):
    del sync_bn  # No batch norm in DINO's head.
    return DINOHead(config.proj_hidden_dim or features, config.proj_out_dim,
                    config.dino_prototypes)

  return base.build_teacher_model(config, image_shape, hidden_layers=HEAD_LAYERS - 1,
                                  last_bn=False, cls=DINOModel, head=head,
                                  prototypes=config.dino_prototypes,
                                  temperature=float(teacher_temperature(config, 0.0)))


serving_input_shape = base.stacked_serving_input_shape


def teacher_temperature(config, epoch: tf.Tensor) -> tf.Tensor:
  """The teacher's temperature at `epoch`: linear from --warmup_teacher_temperature to
  --teacher_temperature over --warmup_teacher_temperature_epochs, then constant."""
  end = tf.constant(config.teacher_temperature, tf.float32)
  if config.warmup_teacher_temperature_epochs <= 0:
    return end
  start = tf.constant(config.warmup_teacher_temperature, tf.float32)
  done = tf.minimum(tf.cast(epoch, tf.float32) / config.warmup_teacher_temperature_epochs, 1.0)
  return start + (end - start) * done


def dino_loss(student: tf.Tensor, teacher: tf.Tensor, center: tf.Tensor,
              student_temperature: float, teacher_temperature: tf.Tensor):
  """(per-image loss [n], per-pair hit [n, 2], per-view teacher entropy [n, 2]) of the student's
  outputs `student` [n, V, K] on V views (the two views first) and the teacher's `teacher`
  [n, 2, K] on the two views, less `center` [K] (module docstring)."""
  views = student.shape[1] if student.shape[1] is not None else tf.shape(student)[1]
  q = tf.nn.softmax((tf.cast(teacher, tf.float32) - center) / teacher_temperature, axis=-1)
  log_p = tf.nn.log_softmax(tf.cast(student, tf.float32) / student_temperature, axis=-1)
  cross = -tf.einsum("nvk,nwk->nvw", q, log_p)  # Teacher view v against student view w.
  not_same = 1.0 - tf.one_hot(tf.range(NUM_VIEWS), views)  # [2, V]: w != v.
  pairs = 2.0 * (tf.cast(views, tf.float32) - 1.0)
  loss = tf.reduce_sum(cross * not_same, axis=[1, 2]) / pairs
  hits = tf.cast(tf.equal(tf.argmax(q, axis=-1), tf.argmax(log_p[:, NUM_VIEWS - 1::-1], axis=-1)),
                 tf.float32)  # Teacher view v against the student's other view of the two.
  entropy = -tf.reduce_sum(q * tf.math.log(tf.maximum(q, 1e-30)), axis=-1)
  return loss, hits, entropy


def model_fn(model, batch, mode, config):
  end_points, embeddings, predictions, predicted = base.embed_views(model, batch, mode)
  if predicted is not None:
    return predicted
  training = mode == base.TRAIN
  outputs = config.dino_prototypes
  student = tf.reshape(tf.cast(end_points["logits"], tf.float32), [-1, NUM_VIEWS, outputs])
  if LOCAL_VIEWS in batch:  # A second pass, at the local views' resolution.
    local = model(base.flatten_stacked(batch[LOCAL_VIEWS]), training=training)["logits"]
    local = tf.reshape(tf.cast(local, tf.float32), [tf.shape(student)[0], -1, outputs])
    student = tf.concat([student, local], axis=1)
  teacher = model.teacher(base.flatten_stacked(batch["image"]), training=training)["logits"]
  teacher = tf.stop_gradient(tf.reshape(tf.cast(teacher, tf.float32), [-1, NUM_VIEWS, outputs]))
  loss, hits, entropy = dino_loss(student, teacher, model.center, config.temperature,
                                  model.teacher_temperature)
  count = tf.cast(tf.shape(teacher)[0] * NUM_VIEWS, tf.float32)
  return base.ModelSpec(
      loss=tf.reduce_mean(loss), predictions=predictions, end_points=end_points,
      metrics={"loss": loss, "accuracy": tf.reshape(hits, [-1]),
               "teacher_entropy": tf.reshape(entropy, [-1])},
      updates={"teacher_sum": tf.reduce_sum(teacher, axis=[0, 1])[None],
               "teacher_count": count[None]})


def after_step(model, updates, progress, config) -> None:
  """The teacher follows the student; the centre follows the global batch's mean teacher output;
  the next step's teacher temperature."""
  model.follow(base.teacher_momentum(config, TEACHER, progress))
  mean = tf.reduce_sum(updates["teacher_sum"], axis=0) / tf.reduce_sum(updates["teacher_count"])
  model.center.assign(config.center_momentum * model.center + (1.0 - config.center_momentum) *
                      mean)
  model.teacher_temperature.assign(teacher_temperature(config, progress * config.epochs))
