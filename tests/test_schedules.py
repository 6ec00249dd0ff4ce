import numpy as np
import pytest

from training import schedules


def test_scaled_lr():
  assert schedules.scaled_lr(0.1, 1024, 256) == pytest.approx(0.4)
  with pytest.raises(ValueError, match="lr_scale_batch_size"):
    schedules.scaled_lr(0.1, 1024, 0)


def test_warmup_then_piecewise_decay():
  # 10 steps per epoch, warm-up over 2 epochs, decays at epochs 4 and 6.
  s = schedules.WarmupPiecewiseDecay(0.4, 10, warmup_epochs=2, decay_epochs=(4, 6),
                                     decay_factor=0.1)
  steps = [0, 5, 10, 20, 39, 40, 59, 60, 100]
  expected = [0.0, 0.1, 0.2, 0.4, 0.4, 0.04, 0.04, 0.004, 0.004]
  np.testing.assert_allclose([float(s(x)) for x in steps], expected, rtol=1e-5, atol=1e-7)


def test_no_warmup_starts_at_base_rate():
  s = schedules.WarmupPiecewiseDecay(0.1, 3.5)
  assert float(s(0)) == pytest.approx(0.1)


def test_decreasing_boundaries_rejected():
  with pytest.raises(ValueError, match="increasing"):
    schedules.WarmupPiecewiseDecay(0.1, 10, decay_epochs=(5, 3))


def test_warmup_then_cosine_decay():
  # 10 steps per epoch, warm-up over 2 epochs, then a half cosine to 0 at epoch 10.
  s = schedules.WarmupPiecewiseDecay(0.4, 10, warmup_epochs=2, cosine_epochs=10)
  steps = [0, 10, 20, 60, 80, 100, 120]
  expected = [0.0, 0.2, 0.4, 0.2, 0.4 * 0.5 * (1 + np.cos(np.pi * 0.75)), 0.0, 0.0]
  np.testing.assert_allclose([float(s(x)) for x in steps], expected, rtol=1e-5, atol=1e-7)
  optimizer = schedules.make_optimizer("sgd", 0.1, 256, 256, 10, lr_schedule="cosine",
                                       epochs=4)
  assert float(optimizer.learning_rate) == pytest.approx(0.1)  # Step 0, no warm-up.
  with pytest.raises(ValueError, match="valid choices: step, cosine"):
    schedules.make_optimizer("sgd", 0.1, 256, 256, 10, lr_schedule="linear", epochs=4)
  with pytest.raises(ValueError, match="after the warm-up"):
    schedules.WarmupPiecewiseDecay(0.4, 10, warmup_epochs=2, cosine_epochs=2)


def test_lars_matches_numpy():
  """Two LARS steps on a kernel (scaled by its trust ratio) and a bias (plain momentum SGD),
  Keras variables as the models hold them."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  kernel = keras.Variable(rng.normal(size=(3, 4)).astype(np.float32), name="kernel")
  bias = keras.Variable(rng.normal(size=(4,)).astype(np.float32), name="bias")
  grads = [[rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)]
           for _ in range(2)]
  optimizer = schedules.make_optimizer("lars", 0.5, 256, 256, 10)
  assert isinstance(optimizer, schedules.LARS)
  w, b = kernel.numpy().astype(np.float64), bias.numpy().astype(np.float64)
  vw, vb = np.zeros_like(w), np.zeros_like(b)
  for gw, gb in grads:
    optimizer.apply_gradients([(tf.constant(gw), kernel), (tf.constant(gb), bias)])
    ratio = schedules.LARS_ETA * np.linalg.norm(w) / np.linalg.norm(gw)
    vw = schedules.MOMENTUM * vw + 0.5 * ratio * gw
    vb = schedules.MOMENTUM * vb + 0.5 * gb
    w, b = w - vw, b - vb
  np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(bias.numpy(), b, rtol=1e-5, atol=1e-7)
  # A zero gradient leaves the kernel where it is (ratio 1, no division by zero).
  zero = keras.Variable(np.ones((2, 2), np.float32), name="kernel")
  schedules.make_optimizer("lars", 0.5, 256, 256, 10).apply_gradients(
      [(tf.zeros((2, 2)), zero)])
  np.testing.assert_array_equal(zero.numpy(), np.ones((2, 2)))
