"""k-nearest-neighbour classification on pooled features (cosine similarity).

Each feature vector is L2-normalised; a test example's k nearest training examples (largest cosine
similarity; ties go to the lower training index) vote for their labels with weight
exp(similarity / temperature) (temperature 0.07, the weighting of Wu et al. 2018 and DINO), and the
class with the largest total weight wins (ties go to the lower class index). Similarities are
computed in blocks of `test_chunk` x `train_chunk`, keeping a running top-k, so memory stays
bounded for any dataset size. The features are the raw pooled ones (not standardised).
"""

from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


def _normalise(x) -> tf.Tensor:
  return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=1, epsilon=1e-12)


def knn_scores(train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray,
               num_classes: int, k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
               test_chunk: int = 1024, train_chunk: int = 65536) -> np.ndarray:
  """Vote totals `[N_test, num_classes]` of the similarity-weighted kNN classifier."""
  if k < 1:
    raise ValueError(f"knn k must be a positive integer, got {k}")
  if temperature <= 0:
    raise ValueError(f"knn temperature must be positive, got {temperature}")
  num_train = len(train_labels)
  if num_train == 0:
    raise ValueError("kNN needs at least one training example")
  k = min(k, num_train)
  train_labels = tf.constant(np.asarray(train_labels, np.int32))
  starts = range(0, num_train, train_chunk)
  # Blocks are normalised when used, so no normalised copy of the training set is kept.
  train_block = lambda s: _normalise(train_features[s:s + train_chunk])
  scores = []
  for start in range(0, len(test_features), test_chunk):
    query = _normalise(test_features[start:start + test_chunk])
    best_sim = tf.zeros([query.shape[0], 0])
    best_idx = tf.zeros([query.shape[0], 0], tf.int32)
    offset = 0
    for block in map(train_block, starts):
      sim = tf.matmul(query, block, transpose_b=True)
      top = tf.math.top_k(sim, min(k, block.shape[0]))
      # Earlier blocks come first, so top_k's tie order (lower position first) keeps lower indices.
      merged_sim = tf.concat([best_sim, top.values], axis=1)
      merged_idx = tf.concat([best_idx, top.indices + offset], axis=1)
      keep = tf.math.top_k(merged_sim, min(k, merged_sim.shape[1]))
      best_sim = keep.values
      best_idx = tf.gather(merged_idx, keep.indices, batch_dims=1)
      offset += block.shape[0]
    weights = tf.exp(best_sim / temperature)
    votes = tf.one_hot(tf.gather(train_labels, best_idx), num_classes) * weights[..., None]
    scores.append(tf.reduce_sum(votes, axis=1).numpy())
  return np.concatenate(scores, axis=0)


def knn_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                 test_features: np.ndarray, test_labels: np.ndarray, num_classes: int,
                 k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE, **chunks) -> float:
  """Top-1 accuracy of the kNN classifier."""
  scores = knn_scores(train_features, train_labels, test_features, num_classes, k, temperature,
                      **chunks)
  return float(np.mean(np.argmax(scores, axis=1) == np.asarray(test_labels)))


def knn_per_layer(train: Mapping[str, np.ndarray], train_labels: np.ndarray,
                  test: Mapping[str, np.ndarray], test_labels: np.ndarray, num_classes: int,
                  k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE) -> Dict[str, float]:
  """kNN top-1 accuracy for each layer."""
  return {name: knn_accuracy(train[name], train_labels, test[name], test_labels, num_classes, k,
                             temperature) for name in train}
