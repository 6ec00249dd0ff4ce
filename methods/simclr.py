"""SimCLR (Chen et al. 2020): two augmented views of every image, a projection head, and the
NT-Xent contrastive loss over the global batch.

The `simclr_views` op makes two views of each image ([B,2,H,W,C]). The backbone embeds all 2B
views at once; the projection head (dense - batch norm - ReLU - dense - batch norm, as in SimCLR
v2's two-layer head) maps pre_logits to `proj_out_dim` dimensions, which become the model's
`logits` end point (what the export serves). The loss: every view must pick its other view among
the 2N-1 other views of the global batch (N images over all replicas), by cosine similarity over
`temperature`; an image's loss is the sum of its two views' cross-entropies, and the batch's loss
their mean over the images. That is the loss of the paper's released code (google-research/simclr,
`add_contrastive_loss`: the sum of both directions' mean losses), with which its recipes (LARS's
rate, the weight decay) were set; the paper's Algorithm 1 writes half of it, the mean over the 2N
views. Under a multi-replica strategy each replica's embeddings are gathered into the global
batch (an all-reduce of each replica's block in place: differentiable), so the negatives are
those of the global batch, as in the paper.

Metrics: `loss`, per image (its two views); `accuracy`, contrastive top-1 over the views, the share
of views whose most similar other view is their pair (chance 1/(2N-1)), the pretext accuracy the
reports show; `contrast_acc`, the reference code's: the share of first views whose most similar
second view (of the N) is their pair (chance 1/N).
"""

import tensorflow as tf

from datasets.copies import NUM_VIEWS
from methods import base

_LARGE = 1e9  # Masks a view's similarity with itself.


def validate(config) -> None:
  base.require_op(config, "simclr_views", "resize,simclr_views,-1_to_1")
  base.require_two_images(config)


def build_model(config, image_shape, num_classes):
  del num_classes  # Every image is its own class.
  return base.build_projected_model(config, image_shape, hidden_layers=1, last_bn=True)


serving_input_shape = base.stacked_serving_input_shape


def nt_xent(embeddings: tf.Tensor, temperature: float):
  """NT-Xent of L2-normalised `embeddings` [2n, D] of this replica, rows (2i, 2i+1) the two views
  of image i, against the views of the global batch: (per-row cross-entropy [2n], per-row
  contrastive top-1 hit [2n], per-image hit of its first view among the second views [n])."""
  everything, offset = base.global_batch(embeddings)
  rows = tf.shape(embeddings)[0]
  own = offset + tf.range(rows)                  # This replica's rows in the global batch.
  pair = tf.bitwise.bitwise_xor(own, 1)          # 2i <-> 2i+1.
  logits = tf.matmul(embeddings, everything, transpose_b=True) / temperature
  logits -= _LARGE * tf.one_hot(own, tf.shape(everything)[0])
  loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=pair, logits=logits)
  hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), pair), tf.float32)
  first_against_second = logits[::2, 1::2]       # [n, N]: first views, every image's second.
  image = tf.argmax(first_against_second, axis=1, output_type=tf.int32)
  return loss, hits, tf.cast(tf.equal(image, own[::2] // 2), tf.float32)


def model_fn(model, batch, mode, config):
  end_points, embeddings, predictions, predicted = base.embed_views(model, batch, mode)
  if predicted is not None:
    return predicted
  loss, hits, contrast_acc = nt_xent(embeddings, config.temperature)
  per_image = tf.reduce_sum(tf.reshape(loss, [-1, NUM_VIEWS]), axis=1)  # Both directions.
  return base.ModelSpec(loss=tf.reduce_mean(per_image),
                        metrics={"loss": per_image, "accuracy": hits, "contrast_acc": contrast_acc},
                        predictions=predictions, end_points=end_points)
