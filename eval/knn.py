"""k-nearest-neighbour classification on pooled features (cosine similarity), streamed.

Each feature vector is L2-normalised; a test example's k nearest training examples (largest cosine
similarity; ties go to the lower training index) vote for their labels with weight
exp(similarity / temperature) (temperature 0.07, the weighting of Wu et al. 2018 and DINO), and the
class with the largest total weight wins (ties go to the lower class index). The features are the
raw pooled ones (not standardised).

Streaming: the test rows (as many as `memory_bytes` allows at once, normalised once) stay in
memory while the training rows go by in blocks of `train_chunk`, each read from the store and
normalised once, against every test chunk, keeping a running top-k; memory does not grow with the
training set. It runs where TensorFlow places it: on the GPU when there is one.
"""

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from eval import store as store_lib

DEFAULT_K = 20
DEFAULT_TEMPERATURE = 0.07


def _normalise(x) -> tf.Tensor:
  return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=1, epsilon=1e-12)


def _merge(best_sim, best_idx, block, offset, k):
  """The running top-k of every query of `best_sim` after the similarities `block`
  (`[queries, rows]`, its rows numbered from `offset`); earlier rows come first, so top_k's tie
  order (lower position first) keeps lower indices."""
  top = tf.math.top_k(block, min(k, int(block.shape[1])))
  merged_sim = tf.concat([best_sim, top.values], axis=1)
  merged_idx = tf.concat([best_idx, top.indices + offset], axis=1)
  keep = tf.math.top_k(merged_sim, min(k, int(merged_sim.shape[1])))
  return keep.values, tf.gather(merged_idx, keep.indices, batch_dims=1)


def knn_scores(train: store_lib.Store, name: str, test: store_lib.Store, num_classes: int,
               k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
               rows: Optional[np.ndarray] = None, test_chunk: int = 1024,
               train_chunk: int = 65536, memory_bytes: Optional[int] = None) -> np.ndarray:
  """Vote totals `[N_test, num_classes]` of the similarity-weighted kNN classifier of layer
  `name`, its neighbours among `rows` of `train` (default: all)."""
  if k < 1:
    raise ValueError(f"knn k must be a positive integer, got {k}")
  if temperature <= 0:
    raise ValueError(f"knn temperature must be positive, got {temperature}")
  rows = np.arange(train.num_examples) if rows is None else np.asarray(rows)
  if len(rows) == 0:
    raise ValueError("kNN needs at least one training example")
  k = min(k, len(rows))
  dim = train.dims[name]
  labels = tf.constant(train.labels[rows])
  if memory_bytes is not None:  # A block of training rows, and its similarities to a chunk.
    train_chunk = max(1, min(train_chunk, memory_bytes // (4 * 4 * (dim + test_chunk))))
  # Test rows held per pass: normalised features, the running top-k.
  per_pass = test.num_examples
  if memory_bytes is not None:
    per_pass = max(1, (memory_bytes // 2) // (4 * dim + 8 * k))
  scores = []
  for first in range(0, test.num_examples, per_pass):
    last = min(test.num_examples, first + per_pass)
    queries = [_normalise(test.read(name, slice(s, min(last, s + test_chunk))))
               for s in range(first, last, test_chunk)]
    best = [(tf.zeros([int(q.shape[0]), 0]), tf.zeros([int(q.shape[0]), 0], tf.int32))
            for q in queries]
    for offset in range(0, len(rows), train_chunk):
      block = _normalise(train.read(name, store_lib.as_rows(rows[offset:offset + train_chunk])))
      best = [_merge(sim, idx, tf.matmul(q, block, transpose_b=True), offset, k)
              for q, (sim, idx) in zip(queries, best)]
    for sim, idx in best:
      votes = tf.one_hot(tf.gather(labels, idx), num_classes) * tf.exp(sim / temperature)[..., None]
      scores.append(tf.reduce_sum(votes, axis=1).numpy())
  return np.concatenate(scores, axis=0)


def knn_per_layer(train: store_lib.Store, test: store_lib.Store, num_classes: int,
                  k: int = DEFAULT_K, temperature: float = DEFAULT_TEMPERATURE,
                  rows: Optional[np.ndarray] = None, layers: Optional[Sequence[str]] = None,
                  memory_bytes: Optional[int] = None, **chunks) -> Dict[str, float]:
  """kNN top-1 accuracy of each layer (default: all of the store's)."""
  out = {}
  for name in layers or train.layers:
    scores = knn_scores(train, name, test, num_classes, k, temperature, rows,
                        memory_bytes=memory_bytes, **chunks)
    out[name] = float(np.mean(np.argmax(scores, axis=1) == test.labels))
  return out
