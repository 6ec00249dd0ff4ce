"""SwAV: Sinkhorn-Knopp's codes and the swapped-prediction loss against NumPy written from the
paper's equations, the codes' marginals, the codes and loss over two replicas against one device,
the prototypes kept on the unit sphere, the settings it refuses."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import base
from methods import swav
from tests import replicas


def numpy_sinkhorn(scores, epsilon, iterations):
  """Caron et al. 2020, section 3.1 and Algorithm 1: Q = exp(C^T Z / epsilon) [K, B], normalised
  to sum 1, then alternately each prototype's row scaled to sum 1/K and each sample's column to
  1/B; the codes are B Q's columns."""
  q = np.exp(np.asarray(scores, np.float64).T / epsilon)
  k, b = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True) * k
    q /= q.sum(axis=0, keepdims=True) * b
  return (q * b).T


def numpy_swav_loss(scores, codes, temperature):
  """Eq. 2-3: an image's loss is the cross-entropy of each view's softmax(z.c / t) against the
  other view's code, averaged over its two views."""
  s = np.asarray(scores, np.float64) / temperature
  log_p = s - s.max(1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
  q = np.asarray(codes, np.float64)
  other = q.reshape(-1, 2, q.shape[1])[:, ::-1].reshape(q.shape)
  return (-(other * log_p).sum(1)).reshape(-1, 2).mean(1)


def numpy_multi_crop_loss(scores, codes, local_scores, temperature):
  """Section 3.2 (multi-crop) and the paper's code: each of the two views' codes is predicted by
  every other view of the image, the other view and the N local ones; an image's loss is the mean
  over those N + 1 predictions, averaged over the two codes."""
  def log_softmax(x):
    x = np.asarray(x, np.float64) / temperature
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))
  k = scores.shape[1]
  log_p = log_softmax(scores).reshape(-1, 2, k)
  q = np.asarray(codes, np.float64).reshape(-1, 2, k)
  local = log_softmax(local_scores).reshape(q.shape[0], -1, k)
  losses = np.zeros(q.shape[0])
  for i in range(q.shape[0]):
    for v in range(2):
      predictions = [log_p[i, 1 - v]] + list(local[i])
      losses[i] += np.mean([-(q[i, v] * p).sum() for p in predictions]) / 2
  return losses


def _scores(rng, n, dim, k):
  z = rng.normal(size=(n, dim))
  c = rng.normal(size=(dim, k))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  c /= np.linalg.norm(c, axis=0, keepdims=True)
  return (z @ c).astype(np.float32)


@pytest.mark.parametrize("seed,n,dim,k,epsilon,iterations", [
    (0, 8, 4, 3, 0.05, 3), (1, 64, 16, 30, 0.05, 3), (2, 32, 8, 100, 0.1, 10),
    (3, 16, 128, 5, 0.5, 1)])
def test_sinkhorn_matches_numpy(seed, n, dim, k, epsilon, iterations):
  scores = _scores(np.random.default_rng(seed), n, dim, k)
  codes = swav.sinkhorn(tf.constant(scores), epsilon, iterations).numpy()
  np.testing.assert_allclose(codes, numpy_sinkhorn(scores, epsilon, iterations), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(codes.sum(1), 1.0, rtol=1e-5)  # Each code a distribution.


def test_the_codes_spread_the_batch_evenly_over_the_prototypes():
  """Enough iterations reach both marginals: every code sums to 1 and every prototype gets N/K
  of the batch, even when every embedding is nearest to the same prototype."""
  rng = np.random.default_rng(4)
  scores = _scores(rng, 60, 8, 6) * 0.5
  scores[:, 0] = 0.6  # Prototype 0 nearest to all.
  codes = swav.sinkhorn(tf.constant(scores), 0.05, 200).numpy()
  np.testing.assert_allclose(codes.sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(codes.sum(0), 60 / 6, rtol=1e-3)
  assert (scores.argmax(1) == 0).all() and (codes.argmax(1) != 0).any()


@pytest.mark.parametrize("seed,images,k,temperature", [(0, 4, 3, 0.1), (1, 16, 50, 0.1),
                                                       (2, 7, 10, 1.0)])
def test_loss_matches_numpy(seed, images, k, temperature):
  rng = np.random.default_rng(seed)
  scores = _scores(rng, 2 * images, 8, k)
  codes = numpy_sinkhorn(scores, 0.05, 3).astype(np.float32)
  loss, hits, entropy = swav.swav_loss(tf.constant(scores), tf.constant(codes), temperature)
  np.testing.assert_allclose(loss.numpy(), numpy_swav_loss(scores, codes, temperature),
                             rtol=1e-5, atol=1e-5)
  other = codes.reshape(-1, 2, k)[:, ::-1].reshape(-1, k)
  np.testing.assert_array_equal(hits.numpy(), (scores.argmax(1) == other.argmax(1)))
  np.testing.assert_allclose(entropy.numpy(), -(codes * np.log(codes)).sum(1), rtol=1e-4)


@pytest.mark.parametrize("images,local,k", [(4, 1, 5), (8, 6, 30)])
def test_multi_crop_loss_matches_numpy(images, local, k):
  rng = np.random.default_rng(images + local)
  scores = _scores(rng, 2 * images, 16, k)
  local_scores = _scores(rng, local * images, 16, k)
  codes = numpy_sinkhorn(scores, 0.05, 3).astype(np.float32)
  loss, _, _ = swav.swav_loss(tf.constant(scores), tf.constant(codes), 0.1,
                              tf.constant(local_scores))
  np.testing.assert_allclose(loss.numpy(), numpy_multi_crop_loss(scores, codes, local_scores,
                                                                 0.1), rtol=1e-5, atol=1e-5)


def tiny_config(**overrides):
  values = dict(task="swav", workdir="/unused", preprocessing="resize,simclr_views,-1_to_1",
                architecture="resnet50", filters_factor=1, proj_hidden_dim=32, proj_out_dim=16,
                swav_prototypes=10, batch_size=8)
  values.update(overrides)
  return Config(**values)


def test_model_fn_scores_unit_embeddings_against_unit_prototypes_kept_unit_after_a_step():
  tf.keras.utils.set_random_seed(0)
  config = tiny_config()
  model = swav.build_model(config, (2, 16, 16, 3), None)
  kernel = model.prototypes.kernel
  np.testing.assert_allclose(np.linalg.norm(kernel.numpy(), axis=0), 1.0, rtol=1e-5)
  images = tf.random.uniform([6, 2, 16, 16, 3], -1, 1)
  optimizer = tf.keras.optimizers.SGD(1.0)
  with tf.GradientTape() as tape:
    spec = swav.model_fn(model, {"image": images}, base.TRAIN, config)
  assert spec.metrics["loss"].shape == [6] and spec.metrics["accuracy"].shape == [12]
  assert float(spec.loss) == pytest.approx(float(np.mean(spec.metrics["loss"])), rel=1e-6)
  assert np.all(spec.metrics["code_entropy"].numpy() <= np.log(10) + 1e-5)
  grads = tape.gradient(spec.loss, model.trainable_variables)
  assert all(g is not None for g in grads)
  optimizer.apply_gradients(zip(grads, model.trainable_variables))
  assert np.abs(np.linalg.norm(kernel.numpy(), axis=0) - 1.0).max() > 1e-3  # Off the sphere,
  swav.after_step(model, {}, tf.constant(0.0), config)
  np.testing.assert_allclose(np.linalg.norm(kernel.numpy(), axis=0), 1.0, rtol=1e-5)  # back.


def test_model_fn_with_local_views_embeds_them_in_a_second_pass_and_they_move_the_loss():
  tf.keras.utils.set_random_seed(1)
  config = tiny_config(local_crops=3, local_crop_size=8)
  model = swav.build_model(config, (2, 16, 16, 3), None)
  images = tf.random.uniform([4, 2, 16, 16, 3], -1, 1)
  local = tf.random.uniform([4, 3, 8, 8, 3], -1, 1)
  with tf.GradientTape() as tape:
    spec = swav.model_fn(model, {"image": images, "local_views": local}, base.TRAIN, config)
  assert spec.metrics["loss"].shape == [4] and spec.metrics["accuracy"].shape == [8]
  grads = tape.gradient(spec.loss, model.trainable_variables)
  assert all(g is not None for g in grads)
  # The loss of the same model is the NumPy multi-crop loss of its scores and codes (inference
  # mode, so that both passes see the same batch norm).
  spec = swav.model_fn(model, {"image": images, "local_views": local}, base.EVAL, config)
  scores = model.prototypes(spec.predictions["embeddings"]).numpy()
  local_scores = model.prototypes(base.embed_stacked(model, local, base.EVAL)[1]).numpy()
  codes = np.concatenate([numpy_sinkhorn(scores.reshape(4, 2, -1)[:, v], 0.05, 3)[:, None]
                          for v in range(2)], axis=1).reshape(scores.shape)
  np.testing.assert_allclose(spec.metrics["loss"].numpy(),
                             numpy_multi_crop_loss(scores, codes, local_scores, 0.1),
                             rtol=1e-4, atol=1e-4)
  without = swav.model_fn(model, {"image": images}, base.EVAL, config)
  assert np.abs(without.metrics["loss"].numpy() - spec.metrics["loss"].numpy()).max() > 1e-3


_TWO_REPLICAS = textwrap.dedent("""
    from tests import replicas
    strategy = replicas.two_cpus()
    import tensorflow as tf
    from methods import swav

    def codes_and_loss(local):
      with tf.GradientTape() as tape:
        tape.watch(local)
        codes = tf.stop_gradient(swav.sinkhorn(local, 0.05, 3))
        loss = tf.reduce_mean(swav.swav_loss(local, codes, 0.1)[0])
        # The trainer's scaling: each replica's mean over the number of replicas.
        scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
      return codes, scaled, tape.gradient(scaled, local)

    replicas.compare(strategy, codes_and_loss, *replicas.inputs())
    """)


def test_codes_loss_and_gradients_over_two_replicas_match_one_device():
  """Each replica holds half of the images: Sinkhorn's sums run over the global batch, so the
  codes, the summed loss and every row's gradient equal one device's."""
  scores = _scores(np.random.default_rng(7), 24, 8, 6)
  (codes_one, loss_one, grad_one), (codes_two, loss_two, grad_two) = replicas.run(
      _TWO_REPLICAS, scores)
  np.testing.assert_allclose(np.array(codes_one), numpy_sinkhorn(scores, 0.05, 3), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(np.array(codes_two), np.array(codes_one), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
  np.testing.assert_allclose(np.array(grad_two), np.array(grad_one), rtol=1e-4, atol=1e-6)


def test_validation():
  with pytest.raises(ConfigError, match="needs the 'simclr_views' op"):
    swav.validate(tiny_config(preprocessing="resize,-1_to_1"))
  with pytest.raises(ConfigError, match="--batch_size=1: swav needs at least 2 images"):
    swav.validate(tiny_config(batch_size=1))
