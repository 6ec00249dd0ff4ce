"""SwAV (Caron et al. 2020): online clustering of two views of every image into prototypes, each
view predicting the other's cluster assignment ("swapped prediction").

The views are SimCLR's (`simclr_views`, [B,2,H,W,C]). The backbone and a projection head
(base.ProjectionHead: dense - batch norm - ReLU - dense, the paper's 2048-128, here
--proj_hidden_dim and --proj_out_dim) embed every view; the embeddings z are L2-normalised and
scored against --swav_prototypes unit prototypes c_k (a dense layer without bias, trained by the
gradient and normalised again after every optimiser step, `after_step`). For each view, the codes
q (soft assignments of the batch's embeddings to the prototypes) come from the scores by the
Sinkhorn-Knopp algorithm (--sinkhorn_iterations, entropic regularisation --swav_epsilon), which
spreads the global batch (every replica's) evenly over the prototypes, without gradient. With
p_v = softmax(z_v . c / t) (t: --temperature, the paper's 0.1), an image's loss is

  L = ( -sum_k q_2,k log p_1,k  -  sum_k q_1,k log p_2,k ) / 2,

the batch's its mean over the images (the paper's code: the mean over the views that make codes of
each prediction loss). Batch norm is synchronised across replicas, as every backbone's.

Multi-crop (--local_crops N, `simclr_views`' small views in the batch's `local_views`): the
backbone embeds the two views and the N local views in two passes (one per resolution, as the
paper's code does); only the two views make codes, and each code is predicted by every other
view of its image, the other view and the N local ones:

  L = 1/2 sum_{v=1,2} 1/(N+1) ( -sum_k q_v,k log p_v',k  -  sum_{j=1..N} sum_k q_v,k log p_j,k ),

with v' the other of the two views; without local views it is the loss above.

Not implemented: the queue of earlier embeddings that the paper adds to Sinkhorn's batch when
batches are small, and freezing the prototypes in the first epoch.

Metrics: `loss`; `accuracy`, the share of views whose most probable prototype is the one the
other view's code weighs most (chance 1/K); `code_entropy`, the mean entropy of a view's code
in nats (ln K: spread over all prototypes; 0: one prototype), the pretext metric.
"""

from typing import Optional

import keras
import tensorflow as tf

from datasets import LOCAL_VIEWS
from datasets.copies import NUM_VIEWS
from methods import base

PRETEXT_METRIC = "code_entropy"
TAKES_LOCAL_VIEWS = True  # Multi-crop: the batch may hold `local_views` (--local_crops).


class SwAVModel(base.ProjectedModel):
  """A backbone and projection head (base.ProjectedModel) and the prototypes, the columns of the
  unit-normalised kernel [D, K] of `prototypes`."""

  def __init__(self, backbone, projection, name: str, prototypes: int):
    super().__init__(backbone, projection, name)
    dim = projection.compute_output_shape((None, 1))[-1]
    self.prototypes = keras.layers.Dense(prototypes, use_bias=False, name="prototypes")
    self.prototypes.build((None, dim))
    normalise_prototypes(self)


def normalise_prototypes(model) -> None:
  kernel = model.prototypes.kernel
  kernel.assign(tf.math.l2_normalize(kernel, axis=0))


def validate(config) -> None:
  base.require_op(config, "simclr_views", "resize,simclr_views,-1_to_1")
  base.require_two_images(config, "(its codes spread the batch over the prototypes)")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  return base.build_projected_model(config, image_shape, hidden_layers=1, last_bn=False,
                                    cls=SwAVModel, prototypes=config.swav_prototypes)


serving_input_shape = base.stacked_serving_input_shape


def sinkhorn(scores: tf.Tensor, epsilon: float, iterations: int) -> tf.Tensor:
  """Codes [n, K] of this replica's `scores` [n, K] (embeddings against unit prototypes, each in
  [-1, 1]): Q = exp(scores / epsilon), scaled alternately so that each prototype's row sums to
  1/K and each embedding's column to 1/N over the global batch of N embeddings, `iterations`
  times; returned per embedding (columns times N: each code sums to 1)."""
  q = tf.exp((tf.cast(scores, tf.float32) - 1.0) / epsilon)  # The same codes as exp(scores / e).
  count = base.replica_sum(tf.cast(tf.shape(q)[0], tf.float32))
  prototypes = tf.cast(tf.shape(q)[1], tf.float32)
  q /= base.replica_sum(tf.reduce_sum(q))
  for _ in range(iterations):
    q /= base.replica_sum(tf.reduce_sum(q, axis=0, keepdims=True)) * prototypes
    q /= tf.reduce_sum(q, axis=1, keepdims=True) * count
  return q * count


def swav_loss(scores: tf.Tensor, codes: tf.Tensor, temperature: float,
              local_scores: Optional[tf.Tensor] = None):
  """(per-image loss [n], per-view hit [2n], per-view code entropy [2n]) of the `scores` [2n, K]
  of the views (rows 2i, 2i+1: image i) and their `codes` [2n, K]: each view predicts the code of
  the other view of its image, and so does each of the N local views of `local_scores` [nN, K]
  (rows iN .. iN+N-1: image i), if given (module docstring)."""
  log_p = tf.nn.log_softmax(tf.cast(scores, tf.float32) / temperature, axis=1)
  other = base.swap_views(codes)
  cross_entropy = -tf.reduce_sum(other * log_p, axis=1)  # Row 2i+v: the other view's code.
  hits = tf.cast(tf.equal(tf.argmax(log_p, axis=1), tf.argmax(other, axis=1)), tf.float32)
  entropy = -tf.reduce_sum(codes * tf.math.log(tf.maximum(codes, 1e-30)), axis=1)
  per_code = base.swap_views(cross_entropy)  # Row 2i+v: code v's, predicted by the other view.
  per_code = tf.reshape(per_code, [-1, NUM_VIEWS])
  if local_scores is not None:
    local_log_p = tf.nn.log_softmax(tf.cast(local_scores, tf.float32) / temperature, axis=1)
    local_log_p = tf.reshape(local_log_p, [tf.shape(per_code)[0], -1, tf.shape(scores)[1]])
    by_image = tf.reshape(codes, [tf.shape(per_code)[0], NUM_VIEWS, -1])
    local_ce = -tf.einsum("ivk,ijk->ivj", by_image, local_log_p)  # Code v by local view j.
    views = tf.cast(tf.shape(local_log_p)[1], tf.float32) + 1.0
    per_code = (per_code + tf.reduce_sum(local_ce, axis=2)) / views
  return tf.reduce_mean(per_code, axis=1), hits, entropy


def model_fn(model, batch, mode, config):
  end_points, embeddings, predictions, predicted = base.embed_views(model, batch, mode)
  if predicted is not None:
    return predicted
  scores = tf.cast(model.prototypes(embeddings), tf.float32)
  by_view = tf.reshape(scores, [-1, NUM_VIEWS, config.swav_prototypes])
  codes = tf.stack([sinkhorn(by_view[:, v], config.swav_epsilon, config.sinkhorn_iterations)
                    for v in range(NUM_VIEWS)], axis=1)  # Each view's over the batch's.
  codes = tf.stop_gradient(tf.reshape(codes, tf.shape(scores)))
  local_scores = None
  if LOCAL_VIEWS in batch:  # A second pass, at the local views' resolution.
    _, local_embeddings = base.embed_stacked(model, batch[LOCAL_VIEWS], mode)
    local_scores = tf.cast(model.prototypes(local_embeddings), tf.float32)
  loss, hits, entropy = swav_loss(scores, codes, config.temperature, local_scores)
  return base.ModelSpec(loss=tf.reduce_mean(loss),
                        metrics={"loss": loss, "accuracy": hits, "code_entropy": entropy},
                        predictions=predictions, end_points=end_points)


def after_step(model, updates, progress, config) -> None:
  del updates, progress, config
  normalise_prototypes(model)
