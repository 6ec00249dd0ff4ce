"""BYOL: the loss against NumPy written from the paper's equations, its extremes, the predictor
and the teacher in model_fn, the settings it refuses."""

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import base
from methods import byol
from training import validation


def numpy_byol_loss(predictions, targets):
  """Grill et al. 2020, eq. 2 and the symmetrised loss: for each image i with views (2i, 2i+1),
  L_i = || q_2i / |q_2i| - z_2i+1 / |z_2i+1| ||^2 + || q_2i+1 / |q_2i+1| - z_2i / |z_2i| ||^2."""
  q = np.asarray(predictions, np.float64)
  z = np.asarray(targets, np.float64)
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  q, z = unit(q), unit(z)
  forward = ((q[0::2] - z[1::2]) ** 2).sum(1)
  backward = ((q[1::2] - z[0::2]) ** 2).sum(1)
  return forward + backward


@pytest.mark.parametrize("seed,images,dim", [(0, 1, 3), (1, 8, 16), (2, 33, 256)])
def test_loss_matches_numpy(seed, images, dim):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(2 * images, dim)).astype(np.float32) * 4
  z = rng.normal(size=(2 * images, dim)).astype(np.float32) + 1
  loss, cosine = byol.byol_loss(tf.constant(q), tf.constant(z))
  np.testing.assert_allclose(loss.numpy(), numpy_byol_loss(q, z), rtol=1e-5, atol=1e-5)
  assert loss.shape == [images] and cosine.shape == [images]
  np.testing.assert_allclose(cosine.numpy(), 1 - numpy_byol_loss(q, z) / 4, rtol=1e-5,
                             atol=1e-5)


def test_a_prediction_of_the_other_views_target_costs_nothing_and_of_its_own_does():
  """Each view must predict the teacher's projection of the other view of its image."""
  rng = np.random.default_rng(3)
  z = rng.normal(size=(8, 5)).astype(np.float32)
  swapped = z.reshape(4, 2, 5)[:, ::-1].reshape(8, 5)
  loss, cosine = byol.byol_loss(tf.constant(swapped * 3.0), tf.constant(z))
  np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-5)
  np.testing.assert_allclose(cosine.numpy(), 1.0, atol=1e-6)
  loss, _ = byol.byol_loss(tf.constant(z), tf.constant(z))  # Its own view's: not the task.
  assert (loss.numpy() > 0.1).all()
  loss, cosine = byol.byol_loss(tf.constant(-swapped), tf.constant(z))
  np.testing.assert_allclose(loss.numpy(), 8.0, rtol=1e-5)  # Opposite: 2 x (2 + 2).
  np.testing.assert_allclose(cosine.numpy(), -1.0, atol=1e-6)


def tiny_config(**overrides):
  values = dict(task="byol", workdir="/unused", preprocessing="resize,simclr_views,-1_to_1",
                architecture="resnet50", filters_factor=1, proj_hidden_dim=32, proj_out_dim=16,
                batch_size=8)
  values.update(overrides)
  return Config(**values)


def test_model_fn_predicts_with_the_online_predictor_the_teachers_projection():
  """model_fn's loss is byol_loss of the online network's prediction and the teacher's
  projection of the same views; the gradient reaches the online network and the predictor,
  not the teacher."""
  tf.keras.utils.set_random_seed(0)
  config = tiny_config()
  model = byol.build_model(config, (2, 16, 16, 3), None)
  images = tf.random.uniform([4, 2, 16, 16, 3], -1, 1)
  flat = base.flatten_stacked(images)
  with tf.GradientTape() as tape:
    spec = byol.model_fn(model, {"image": images}, base.EVAL, config)
  online = model.predictor(model.online(flat)["logits"])
  target = model.teacher(flat)["logits"]
  np.testing.assert_allclose(spec.metrics["loss"].numpy(),
                             numpy_byol_loss(online.numpy(), target.numpy()), rtol=1e-4)
  assert float(spec.loss) == pytest.approx(float(np.mean(spec.metrics["loss"])), rel=1e-6)
  grads = tape.gradient(spec.loss, base.trained_variables(model) + model.teacher.variables)
  trained = len(base.trained_variables(model))
  assert all(g is not None for g in grads[:trained])
  assert all(g is None for g in grads[trained:])
  expected = model.online.trainable_variables + model.predictor.trainable_variables
  assert [id(v) for v in base.trained_variables(model)] == [id(v) for v in expected]


def test_validation():
  with pytest.raises(ConfigError, match="needs the 'simclr_views' op"):
    byol.validate(tiny_config(preprocessing="resize,-1_to_1"))
  with pytest.raises(ConfigError, match=r"--teacher_momentum must be in \[0, 1\], got 1.5"):
    validation.validate(tiny_config(teacher_momentum=1.5), check_data=False)
  with pytest.raises(ConfigError, match="--teacher_momentum_schedule='linear' is not valid; "
                                        "choices: constant, cosine"):
    validation.validate(tiny_config(teacher_momentum_schedule="linear"), check_data=False)
