"""Barlow Twins: the loss against NumPy written from the paper's equations, its extremes, the loss
and gradients over two replicas against one device, the settings it refuses, training and
export."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import barlow_twins
from methods import base
from tests import replicas
import train_and_eval
from training import export as export_lib


def numpy_barlow_loss(z, off_diagonal_weight):
  """Zbontar et al. 2021, eq. 1-2: the views' embeddings z^A (rows 2i) and z^B (rows 2i + 1),
  each normalised along the batch (mean 0, standard deviation 1, the batch norm's epsilon 1e-5);
  C_ij = sum_b z^A_bi z^B_bj / N; L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2."""
  z = np.asarray(z, np.float64)
  a, b = z[0::2], z[1::2]
  normalise = lambda v: (v - v.mean(0)) / np.sqrt(v.var(0) + 1e-5)
  c = normalise(a).T @ normalise(b) / len(a)
  off = c - np.diag(np.diag(c))
  return (1 - np.diag(c)) ** 2 @ np.ones(len(c)) + off_diagonal_weight * (off ** 2).sum(), c


@pytest.mark.parametrize("seed,images,dim,weight", [(0, 4, 3, 0.0051), (1, 16, 8, 0.0051),
                                                    (2, 64, 32, 0.1), (3, 9, 128, 0.0)])
def test_loss_matches_numpy(seed, images, dim, weight):
  z = np.random.default_rng(seed).normal(size=(2 * images, dim)).astype(np.float32) * 3 + 1
  expected, c = numpy_barlow_loss(z, weight)
  correlation = barlow_twins.cross_correlation(tf.constant(z))
  np.testing.assert_allclose(correlation.numpy(), c, rtol=1e-5, atol=1e-5)
  loss, on_diagonal, off_diagonal = barlow_twins.barlow_loss(correlation, weight)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5, atol=1e-5)
  assert float(on_diagonal) == pytest.approx(np.diag(c).mean(), abs=1e-5)
  off = c[~np.eye(dim, dtype=bool)]
  assert float(off_diagonal) == pytest.approx(np.sqrt((off ** 2).mean()), abs=1e-5)


class _FixedEmbeddings:
  """A stand-in model whose projection of the batch's views is given."""

  def __init__(self, z):
    self.z = tf.constant(z)

  def __call__(self, images, training=False):
    return {"logits": self.z}


def test_the_same_embedding_on_both_views_correlates_fully_and_unrelated_ones_do_not():
  """model_fn on views embedded alike (each dimension the same on both views, the dimensions
  independent): C near the identity, on_diagonal 1 and a loss near 0; on views embedded
  independently: on_diagonal near 0 and a loss near D."""
  rng = np.random.default_rng(5)
  images, dim = 512, 8
  same = np.repeat(rng.normal(size=(images, dim)), 2, axis=0).astype(np.float32)
  config = Config(task="barlow_twins", workdir="/unused", preprocessing="simclr_views")
  batch = {"image": tf.zeros([images, 2, 4, 4, 3])}
  spec = barlow_twins.model_fn(_FixedEmbeddings(same), batch, base.TRAIN, config)
  assert float(spec.metrics["on_diagonal"][0]) == pytest.approx(1.0, abs=1e-4)
  assert len(set(spec.metrics["on_diagonal"].numpy().tolist())) == 1
  assert float(spec.metrics["off_diagonal"][0]) < 0.1  # Independent dimensions: sampling noise.
  assert float(spec.loss) < 0.01
  apart = rng.normal(size=(2 * images, dim)).astype(np.float32)
  spec = barlow_twins.model_fn(_FixedEmbeddings(apart), batch, base.TRAIN, config)
  assert abs(float(spec.metrics["on_diagonal"][0])) < 0.15
  assert float(spec.loss) == pytest.approx(dim, rel=0.2)
  assert spec.metrics["loss"].shape == [images]  # The batch's, for each of its images.


_TWO_REPLICAS = textwrap.dedent("""
    from tests import replicas
    strategy = replicas.two_cpus()
    import tensorflow as tf
    from methods import barlow_twins

    def loss_and_grad(local):
      with tf.GradientTape() as tape:
        tape.watch(local)
        loss, _, _ = barlow_twins.barlow_loss(barlow_twins.cross_correlation(local), 0.0051)
        # The trainer's scaling: each replica's loss over the number of replicas.
        scaled = loss / tf.distribute.get_replica_context().num_replicas_in_sync
      return scaled, tape.gradient(scaled, local)

    replicas.compare(strategy, loss_and_grad, *replicas.inputs())
    """)


def test_loss_and_gradients_over_two_replicas_match_one_device():
  """Each replica holds half of the images (both views of each): the embeddings are normalised
  and correlated over the global batch, so the summed loss and every row's gradient equal one
  device's."""
  z = np.random.default_rng(7).normal(size=(24, 6)).astype(np.float32)
  (loss_one, grad_one), (loss_two, grad_two) = replicas.run(_TWO_REPLICAS, z)
  np.testing.assert_allclose(loss_one, numpy_barlow_loss(z, 0.0051)[0], rtol=1e-5)
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
  np.testing.assert_allclose(np.array(grad_two), np.array(grad_one), rtol=1e-4, atol=1e-6)
  assert np.abs(np.array(grad_one)).max() > 1e-3


def test_validation():
  with pytest.raises(ConfigError, match="needs the 'simclr_views' op"):
    barlow_twins.validate(Config(task="barlow_twins", workdir="/unused",
                                 preprocessing="resize,-1_to_1"))
  with pytest.raises(ConfigError, match="--batch_size=1: barlow_twins needs at least 2 images"):
    barlow_twins.validate(Config(task="barlow_twins", workdir="/unused",
                                 preprocessing="simclr_views", batch_size=1))


@pytest.mark.slow
def test_barlow_twins_trains_and_exports_the_representation_of_every_method(tmp_path,
                                                                            shapes_data_dir):
  """A few steps: a finite loss, the correlation metrics logged, and an export with every
  backbone end point plus the projection as `logits`."""
  lines = []
  config = Config(
      task="barlow_twins", workdir=str(tmp_path / "wd"), dataset="shapes_small",
      data_dir=shapes_data_dir, architecture="resnet50", filters_factor=1,
      preprocessing="resize,simclr_views,-1_to_1", resize_size=(32, 32), crop_size=(32, 32),
      blur_probability=0.0, proj_hidden_dim=64, proj_out_dim=32, batch_size=16,
      eval_batch_size=32, optimizer="adam", lr=0.002, lr_scale_batch_size=16, epochs=1,
      train_split="train[:48]", val_split="test[:32]", log_every_steps=1,
      save_checkpoints_secs=None, run_eval=True)
  results = train_and_eval.run(config, print_fn=lines.append)
  assert results["step"] == 3
  assert np.isfinite(results["eval_metrics"]["loss"])
  assert -1.0 <= results["eval_metrics"]["on_diagonal"] <= 1.0
  assert results["eval_metrics"]["num_examples"] == 32
  assert any(l.startswith("step 3/3") and " on_diagonal " in l for l in lines)
  info = export_lib.load_export_info(results["export_dir"])
  assert info["eval_preprocessing"] == "resize,-1_to_1"
  assert info["end_points"][-2:] == ["pre_logits", "logits"]
  out = tf.saved_model.load(results["export_dir"]).signatures["representation"](
      images=tf.zeros([3, 32, 32, 3]))
  assert out["logits"].shape == (3, 32) and out["pre_logits"].shape == (3, 512)
