"""The triplet loss with semi-hard negative mining (FaceNet, Schroff et al. 2015), in plain TF.

The definition of the old `tf.contrib.losses.metric_learning.triplet_semihard_loss`:

  d(i, j) = ||e_i - e_j||^2, squared Euclidean distances of the embeddings (as given: normalise
  them first if wanted).
  For every anchor a and positive p (labels equal, a != p), the negatives are the n with
  labels[n] != labels[a]. The chosen negative is
    the semi-hard one: the negative with the smallest d(a, n) among those with d(a, n) > d(a, p);
    if there is none, the negative with the largest d(a, n) (the easiest of the hard ones).
  loss(a, p) = max(0, margin + d(a, p) - d(a, n_chosen)).
  The loss is the mean of loss(a, p) over all anchor-positive pairs. Pairs whose anchor has no
  negative (a batch with one label) count as 0; with no pair at all the loss is 0.

Memory is O(N^2) (sort and binary search per anchor), not the O(N^3) of the contrib version.
"""

import tensorflow as tf


def pairwise_squared_distances(embeddings: tf.Tensor) -> tf.Tensor:
  """[N,D] -> [N,N] squared Euclidean distances, >= 0, exactly 0 on the diagonal."""
  sq = tf.reduce_sum(tf.square(embeddings), axis=1)
  d = sq[:, None] + sq[None, :] - 2.0 * tf.matmul(embeddings, embeddings, transpose_b=True)
  d = tf.maximum(d, 0.0)
  return d * (1.0 - tf.eye(tf.shape(embeddings)[0], dtype=d.dtype))


def triplet_semihard_pair_losses(labels: tf.Tensor, embeddings: tf.Tensor, margin: float = 1.0):
  """(loss(a, p) [N,N], mask of the anchor-positive pairs [N,N]) as the module docstring says."""
  embeddings = tf.cast(embeddings, tf.float32)
  labels = tf.reshape(labels, [-1])
  n = tf.shape(labels)[0]
  d = pairwise_squared_distances(embeddings)
  same = tf.equal(labels[:, None], labels[None, :])
  positive = tf.logical_and(same, tf.logical_not(tf.eye(n, dtype=tf.bool)))
  negative = tf.logical_not(same)
  num_negatives = tf.reduce_sum(tf.cast(negative, tf.int32), axis=1)  # [N]
  # Per anchor, its negatives' distances sorted ascending, non-negatives pushed to the end.
  beyond = tf.stop_gradient(tf.reduce_max(d)) + 1.0
  masked = tf.where(negative, d, beyond)
  order = tf.argsort(tf.stop_gradient(masked), axis=1)
  sorted_d = tf.gather(masked, order, batch_dims=1)                     # [N(a), N]
  # First sorted negative farther than the positive: the semi-hard one, if it is a negative.
  first = tf.searchsorted(tf.stop_gradient(sorted_d), tf.stop_gradient(d), side="right")
  has_semihard = first < num_negatives[:, None]                         # [N(a), N(p)]
  semihard = tf.gather(sorted_d, tf.minimum(first, n - 1), batch_dims=1)
  easiest = tf.gather(sorted_d, tf.maximum(num_negatives - 1, 0)[:, None], batch_dims=1)
  chosen = tf.where(has_semihard, semihard, easiest)
  losses = tf.maximum(margin + d - chosen, 0.0)
  mask = tf.logical_and(positive, (num_negatives > 0)[:, None])
  return tf.where(mask, losses, 0.0), positive


def triplet_semihard_loss(labels: tf.Tensor, embeddings: tf.Tensor,
                          margin: float = 1.0) -> tf.Tensor:
  """The mean semi-hard triplet loss over anchor-positive pairs (module docstring)."""
  losses, positive = triplet_semihard_pair_losses(labels, embeddings, margin)
  count = tf.reduce_sum(tf.cast(positive, tf.float32))
  return tf.math.divide_no_nan(tf.reduce_sum(losses), count)
