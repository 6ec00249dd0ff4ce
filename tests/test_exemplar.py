"""Exemplar: the triplet semi-hard loss against NumPy, the copies op, and a few training steps."""

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from datasets import PreprocessConfig, get_preprocess_fn
from methods import exemplar
from methods import triplet_loss


def numpy_semihard_loss(labels, embeddings, margin):
  """The definition of methods/triplet_loss.py, written out with loops."""
  labels = np.asarray(labels)
  e = np.asarray(embeddings, np.float64)
  d = np.sum((e[:, None, :] - e[None, :, :]) ** 2, axis=-1)
  total, pairs, semihard_found = 0.0, 0, 0
  for a in range(len(labels)):
    negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
    for p in range(len(labels)):
      if p == a or labels[p] != labels[a]:
        continue
      pairs += 1
      if not negatives:
        continue
      semihard = [dn for dn in negatives if dn > d[a, p]]
      semihard_found += bool(semihard)
      chosen = min(semihard) if semihard else max(negatives)
      total += max(0.0, margin + d[a, p] - chosen)
  return (total / pairs if pairs else 0.0), pairs, semihard_found


def _normalised(rng, n, dim):
  e = rng.normal(size=(n, dim))
  return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed,n,dim,num_labels,margin", [
    (0, 12, 4, 3, 0.5), (1, 20, 8, 5, 0.5), (2, 16, 3, 8, 1.0), (3, 30, 16, 6, 0.2),
    (4, 9, 2, 2, 2.0)])
def test_triplet_loss_matches_numpy(seed, n, dim, num_labels, margin):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_labels, size=n).astype(np.int32)
  embeddings = _normalised(rng, n, dim)
  expected, pairs, _ = numpy_semihard_loss(labels, embeddings, margin)
  assert pairs > 0
  got = triplet_loss.triplet_semihard_loss(tf.constant(labels), tf.constant(embeddings), margin)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)


def test_triplet_loss_without_semihard_negatives():
  """The two copies of each image antipodal on the unit sphere: every negative is closer to the
  anchor than its positive, so every pair falls back to the farthest negative."""
  u = _normalised(np.random.default_rng(5), 4, 6)
  embeddings = np.stack([u, -u], axis=1).reshape(8, 6)
  labels = np.repeat(np.arange(4), 2).astype(np.int32)
  expected, pairs, semihard_found = numpy_semihard_loss(labels, embeddings, 0.5)
  assert pairs == 8 and semihard_found == 0
  got = triplet_loss.triplet_semihard_loss(labels, embeddings, 0.5)
  np.testing.assert_allclose(float(got), expected, rtol=1e-5)
  assert expected > 0.5


def test_triplet_loss_edge_cases_and_gradients():
  e = tf.constant(_normalised(np.random.default_rng(6), 6, 4))
  assert float(triplet_loss.triplet_semihard_loss(tf.zeros([6], tf.int32), e, 0.5)) == 0.0
  assert float(triplet_loss.triplet_semihard_loss(tf.range(6), e, 0.5)) == 0.0  # no pairs
  labels = tf.constant([0, 0, 1, 1, 2, 2])
  with tf.GradientTape() as tape:
    tape.watch(e)
    loss = triplet_loss.triplet_semihard_loss(labels, e, 0.5)
  grad = tape.gradient(loss, e)
  assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)


def test_retrieval_hits():
  e = tf.math.l2_normalize(tf.constant([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-0.1, 1.0]]), 1)
  hits = exemplar.retrieval_hits(tf.constant([0, 0, 1, 1]), e).numpy()
  np.testing.assert_array_equal(hits, [1, 1, 1, 1])
  hits = exemplar.retrieval_hits(tf.constant([0, 1, 0, 1]), e).numpy()
  np.testing.assert_array_equal(hits, [0, 0, 0, 0])


def test_exemplar_copies_op():
  config = PreprocessConfig(resize_size=32, crop_size=24, num_of_inception_patches=5,
                            grayscale_probability=0.5)
  image = tf.constant(np.random.default_rng(0).uniform(size=(40, 36, 3)), tf.float32)
  for is_training in (True, False):  # Augmented in evaluation too: the copies are the task.
    fn = get_preprocess_fn("exemplar_copies", is_training, config)
    out = fn({"image": image, "label": tf.constant(3)})
    copies = out["image"].numpy()
    assert copies.shape == (5, 24, 24, 3)
    assert copies.min() >= 0.0 and copies.max() <= 1.0
    assert int(out["label"]) == 3
    assert len({c.tobytes() for c in copies}) == 5


def test_validation():
  config = Config(task="exemplar", workdir="/tmp/unused", preprocessing="resize,standardization")
  with pytest.raises(ConfigError, match="needs the 'exemplar_copies' op"):
    exemplar.validate(config)
  config = Config(task="exemplar", workdir="/tmp/unused", preprocessing="exemplar_copies",
                  num_of_inception_patches=1)
  with pytest.raises(ConfigError, match="num_of_inception_patches=1"):
    exemplar.validate(config)
