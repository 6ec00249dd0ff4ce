"""BYOL (Grill et al. 2020): an online network learns to predict, from one view of an image, a
slowly moving teacher's ("target's") projection of the other view; no negatives.

The views are SimCLR's (`simclr_views`, [B,2,H,W,C]). The online network is the backbone, a
projector (base.ProjectionHead: dense - batch norm - ReLU - dense, the paper's 4096-256, here
--proj_hidden_dim and --proj_out_dim) and a predictor of the projector's widths; the teacher is a
backbone and projector of the same shape whose trainable weights follow the online ones as an
exponential moving average, tau from --teacher_momentum (the paper's 0.996) to 1 on a cosine over
training (--teacher_momentum_schedule), updated after every optimiser step (`after_step`). The
loss of an image is that of both directions: with q the online prediction of one view and z the
teacher's projection of the other (no gradient),

  L = sum over the two views of || q / |q| - z / |z| ||^2 = sum of (2 - 2 cos(q, z)),

and the batch's loss is its mean over the images (the paper's L + L~). Both networks compute batch
statistics in training; under several replicas they are synchronised, as every backbone's (the
paper's). The export serves the online backbone and projector (`logits`), or with
--export_teacher the teacher's. The projector and predictor have no biases (each dense but the last
is followed by a batch norm; the paper's last layers have one).

Metrics: `loss`, per image; `cosine`, the mean cosine of the online predictions and the teacher's
projections of the other views (1: the student predicts the teacher exactly), the pretext metric.
"""

import tensorflow as tf

from datasets.copies import NUM_VIEWS
from methods import base

TEACHER = base.TeacherDefaults(momentum=0.996, schedule="cosine")
PRETEXT_METRIC = "cosine"


class BYOLModel(base.TeacherModel):
  """The online network and its teacher (base.TeacherModel), and the online predictor, of the
  projector's widths and batch norms."""

  def __init__(self, online, teacher, name: str):
    super().__init__(online, teacher, name)
    projector = self.online.projection
    widths = [projector.fc1.units, projector.fc2.units]
    self.predictor = base.ProjectionHead(widths, last_bn=False,
                                         sync_bn=projector.bn1.synchronized, name="predictor")
    self.predictor.build((None, widths[-1]))


def validate(config) -> None:
  base.require_op(config, "simclr_views", "resize,simclr_views,-1_to_1")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  return base.build_teacher_model(config, image_shape, hidden_layers=1, last_bn=False,
                                  cls=BYOLModel)


serving_input_shape = base.stacked_serving_input_shape


def byol_loss(predictions: tf.Tensor, targets: tf.Tensor):
  """(per-image loss [n], per-image mean cosine [n]) of the online `predictions` [2n, D] and the
  teacher's `targets` [2n, D] of the same views (rows 2i, 2i+1: image i): each prediction against
  the target of the other view of its image."""
  cosine = tf.reduce_sum(tf.math.l2_normalize(predictions, axis=1) *
                         tf.math.l2_normalize(base.swap_views(targets), axis=1), axis=1)
  per_image = tf.reshape(cosine, [-1, NUM_VIEWS])
  return tf.reduce_sum(2.0 - 2.0 * per_image, axis=1), tf.reduce_mean(per_image, axis=1)


def model_fn(model, batch, mode, config):
  del config
  base.check_mode(mode)
  training = mode == base.TRAIN
  images = base.flatten_stacked(batch["image"])  # Rows 2i, 2i+1: the views of image i.
  end_points = model(images, training=training)
  projections = tf.cast(end_points["logits"], tf.float32)
  predictions = {"embeddings": tf.math.l2_normalize(projections, axis=1)}
  if mode == base.PREDICT:
    return base.predict_spec(predictions, end_points)
  online = tf.cast(model.predictor(end_points["logits"], training=training), tf.float32)
  targets = tf.stop_gradient(tf.cast(model.teacher(images, training=training)["logits"],
                                     tf.float32))
  loss, cosine = byol_loss(online, targets)
  return base.ModelSpec(loss=tf.reduce_mean(loss), metrics={"loss": loss, "cosine": cosine},
                        predictions=predictions, end_points=end_points)


def after_step(model, updates, progress, config) -> None:
  del updates
  model.follow(base.teacher_momentum(config, TEACHER, progress))
