"""Barlow Twins (Zbontar et al. 2021): two augmented views of every image, a projector, and a loss
that drives the cross-correlation matrix of the two views' embeddings to the identity.

The views are those of SimCLR (`simclr_views`, [B,2,H,W,C]); the backbone embeds all 2B at once.
The projector (base.ProjectionHead: dense - batch norm - ReLU twice, then dense, as the paper's
8192-8192-8192) maps pre_logits to `proj_out_dim` dimensions through `proj_hidden_dim`, the
model's `logits` end point (what the export serves). The loss: each view's embeddings z^A, z^B
[N, D] are normalised along the batch (less their mean, over their standard deviation: a batch norm
without parameters, epsilon 1e-5, over the global batch of N images on every replica, as the
paper's synchronised batch norm), their cross-correlation is C = z^A^T z^B / N, and

  L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2   (`barlow_lambda`, the paper's 0.0051).

Under several replicas the embeddings are gathered into the global batch (methods/base.py's
`global_batch`, differentiable), so every replica computes the same C, the paper's sum of each
replica's part of it.

Metrics, of the batch (given for each of its images): `loss`; `on_diagonal`, the mean of C_ii
(1: each dimension of the embedding the same on both views); `off_diagonal`, the root mean square
of the other C_ij (0: the dimensions uncorrelated).
"""

import tensorflow as tf

from datasets.copies import NUM_VIEWS
from methods import base

# Of the batch norm that normalises the embeddings (PyTorch's default, the paper's).
BN_EPSILON = 1e-5
PRETEXT_METRIC = "on_diagonal"


def validate(config) -> None:
  base.require_op(config, "simclr_views", "resize,simclr_views,-1_to_1")
  base.require_two_images(config, "(its embeddings are normalised over the batch)")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  return base.build_projected_model(config, image_shape, hidden_layers=2, last_bn=False)


serving_input_shape = base.stacked_serving_input_shape


def cross_correlation(embeddings: tf.Tensor) -> tf.Tensor:
  """C [D, D] of this replica's `embeddings` [2n, D] (rows 2i, 2i+1: the two views of image i),
  normalised along the global batch."""
  everything, _ = base.global_batch(embeddings)
  views = tf.reshape(everything, [-1, NUM_VIEWS, everything.shape[-1]])
  mean, variance = tf.nn.moments(views, axes=[0], keepdims=True)
  normalised = (views - mean) * tf.math.rsqrt(variance + BN_EPSILON)
  count = tf.cast(tf.shape(views)[0], tf.float32)
  return tf.matmul(normalised[:, 0], normalised[:, 1], transpose_a=True) / count


def barlow_loss(correlation: tf.Tensor, off_diagonal_weight: float):
  """(loss, mean of the diagonal, root mean square of the rest) of a cross-correlation [D, D]."""
  diagonal = tf.linalg.diag_part(correlation)
  off = correlation - tf.linalg.diag(diagonal)
  dim = tf.cast(tf.shape(diagonal)[0], tf.float32)
  loss = tf.reduce_sum(tf.square(1.0 - diagonal)) + off_diagonal_weight * tf.reduce_sum(
      tf.square(off))
  return loss, tf.reduce_mean(diagonal), tf.sqrt(tf.reduce_sum(tf.square(off)) / (dim * dim - dim))


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  end_points = model(base.flatten_stacked(batch["image"]), training=mode == base.TRAIN)
  embeddings = tf.cast(end_points["logits"], tf.float32)  # 2i, 2i+1: the views of image i.
  predictions = {"embeddings": embeddings}
  if mode == base.PREDICT:
    return base.predict_spec(predictions, end_points)
  loss, on_diagonal, off_diagonal = barlow_loss(cross_correlation(embeddings),
                                                config.barlow_lambda)
  images = tf.shape(batch["image"])[:1]  # The batch's values, once per image (ModelSpec).
  metrics = {"loss": loss, "on_diagonal": on_diagonal, "off_diagonal": off_diagonal}
  return base.ModelSpec(loss=loss, metrics={k: tf.fill(images, v) for k, v in metrics.items()},
                        predictions=predictions, end_points=end_points)
