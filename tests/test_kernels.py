"""The backbones' own batch norm and convolution layers (models/common.py) against Keras' layers:
the same outputs, gradients, moving statistics and variables, through faster kernels."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import models
from models import common


def _op_types(fn, *args):
  return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def _pair(**kwargs):
  """Our batch norm and Keras', made with the same arguments."""
  ours = common.FusedBatchNormalization(**kwargs)
  theirs = keras.layers.BatchNormalization(**kwargs)
  return ours, theirs


def _same_variables(layers, shape, seed=0):
  """Builds `layers` for `shape` and gives their variables the same random values (the moving
  variances positive)."""
  rng = np.random.default_rng(seed)
  for layer in layers:
    layer.build(shape)
  for values in zip(*[layer.weights for layer in layers]):
    value = rng.normal(size=values[0].shape).astype(np.float32)
    if "variance" in values[0].path:
      value = np.abs(value) + 0.5
    for v in values:
      v.assign(value)


def _loss_and_grads(layer, x, training):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=training)
    # Weights that differ per element, so that the gradients are not trivially zero.
    loss = tf.reduce_sum(y * y * 0.5 + y * tf.reshape(tf.range(tf.size(y), dtype=y.dtype) % 7,
                                                      tf.shape(y)))
  return y, tape.gradient(loss, [x] + layer.trainable_weights)


@pytest.mark.parametrize("shape", [(8, 5, 6, 4), (16, 4)], ids=["4d", "2d"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("center", [True, False], ids=["center", "no_center"])
def test_fused_batch_norm_matches_keras(shape, training, center):
  ours, theirs = _pair(momentum=0.9, epsilon=1e-5, center=center)
  _same_variables([ours, theirs], shape)
  x = tf.random.stateless_normal(shape, [1, 2]) * 3.0 + 1.5
  initial = {"mean": ours.moving_mean.numpy(), "var": ours.moving_variance.numpy()}
  for _ in range(2):  # Twice: the second call sees the moving statistics of the first.
    (y1, g1), (y2, g2) = _loss_and_grads(ours, x, training), _loss_and_grads(theirs, x, training)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    assert len(g1) == len(g2) == (3 if center else 2)
    for a, b in zip(g1, g2):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
    for a, b in zip(ours.non_trainable_weights, theirs.non_trainable_weights):
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  # Both moved the statistics twice towards the batch's biased moments (NumPy's).
  flat = np.reshape(x, [-1, shape[-1]])
  expected_mean = initial["mean"] * 0.81 + flat.mean(0) * 0.19 if training else initial["mean"]
  expected_var = initial["var"] * 0.81 + flat.var(0) * 0.19 if training else initial["var"]
  np.testing.assert_allclose(ours.moving_mean, expected_mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours.moving_variance, expected_var, rtol=1e-5, atol=1e-5)
  # The fused kernel really computes it.
  types = _op_types(lambda t: ours(t, training=training), tf.TensorSpec(shape))
  assert "FusedBatchNormV3" in types and "Rsqrt" not in types, types


def test_batch_norm_keeps_keras_path_where_fused_does_not_apply():
  """Cross-replica statistics, float64 inputs, 3-D inputs: Keras' own ops, the same numbers."""
  cases = [(dict(synchronized=True), (4, 3, 3, 2), tf.float32),
           (dict(), (4, 3, 3, 2), tf.float64),
           (dict(), (4, 5, 2), tf.float32)]
  for kwargs, shape, dtype in cases:
    ours, theirs = _pair(momentum=0.9, epsilon=1e-5, dtype=dtype, **kwargs)
    _same_variables([ours, theirs], shape)
    x = tf.cast(tf.random.stateless_normal(shape, [3, 4]), dtype)
    np.testing.assert_array_equal(ours(x, training=True), theirs(x, training=True))
    types = _op_types(lambda t: ours(t, training=True), tf.TensorSpec(shape, dtype))
    assert "FusedBatchNormV3" not in types, (kwargs, shape, dtype)


def test_fused_batch_norm_under_mixed_precision():
  """float16 activations in and out, float32 statistics, as Keras' layer under the policy."""
  ours, theirs = _pair(momentum=0.9, epsilon=1e-5, dtype="mixed_float16")
  _same_variables([ours, theirs], (8, 4, 4, 3))
  x = tf.cast(tf.random.stateless_normal((8, 4, 4, 3), [5, 6]) * 2.0, tf.float16)
  y1, y2 = ours(x, training=True), theirs(x, training=True)
  assert y1.dtype == y2.dtype == tf.float16 and ours.moving_mean.dtype == tf.float32
  np.testing.assert_allclose(y1, y2, atol=5e-3)
  np.testing.assert_allclose(ours.moving_variance, theirs.moving_variance, rtol=1e-3)


# (kernel, stride, padding, input size, whether it is a matrix product)
CONVS = [(1, 1, "same", 7, True), (1, 2, "valid", 7, True),
         (1, 2, "valid", 8, True),  # ResNet's projection shortcut on an even map (see below)
         (3, 1, "same", 1, True), (7, 1, "same", 1, True),
         (3, 1, "same", 2, False), (3, 2, "valid", 9, False)]


@pytest.mark.parametrize("kernel,stride,padding,size,matmul", CONVS)
def test_conv_matches_float64_convolution(kernel, stride, padding, size, matmul):
  """Against Keras' convolution in float64 (TensorFlow's reference kernels): outputs and both
  gradients. The even 1x1 stride-2 case matters: there the kernel gradient of TensorFlow 2.21's
  oneDNN float32 convolution is wrong (half its magnitude off, measured on this CPU)."""
  shape = (3, size, size, 5)
  ours = common.Conv2D(6, kernel, strides=stride, padding=padding, use_bias=False)
  reference = keras.layers.Conv2D(6, kernel, strides=stride, padding=padding, use_bias=False,
                                  dtype="float64")
  ours.build(shape)
  reference.build(shape)
  reference.kernel.assign(tf.cast(ours.kernel, tf.float64))
  x = tf.random.stateless_normal(shape, [7, 8])
  y, grads = _loss_and_grads(ours, x, True)
  y64, grads64 = _loss_and_grads(reference, tf.cast(x, tf.float64), True)
  assert y.shape == y64.shape
  for a, b in zip([y] + grads, [y64] + grads64):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
  types = _op_types(lambda t: ours(t), tf.TensorSpec(shape))
  assert ("Conv2D" not in types) == matmul and ("MatMul" in types) == matmul, types


def _kinds(model):
  """The classes of the model's batch norms and convolutions."""
  return {type(l) for l in model._flatten_layers()
          if isinstance(l, (keras.layers.BatchNormalization, keras.layers.Conv2D))}


def _keras_layers(monkeypatch):
  """Backbones built from now on use Keras' own BatchNormalization and Conv2D, as before."""
  monkeypatch.setattr(common, "FusedBatchNormalization", keras.layers.BatchNormalization)
  monkeypatch.setattr(common, "Conv2D", keras.layers.Conv2D)


@pytest.mark.parametrize("arch", ["resnet50", "revnet50", "vgg19"])
def test_checkpoint_of_keras_layers_restores(arch, tmp_path, monkeypatch):
  """A checkpoint written by a backbone of Keras' own layers (as every checkpoint before these
  layers) restores into today's backbone, which then computes the same end points."""
  images = tf.random.stateless_uniform((4, 32, 32, 3), [9, 9], -1, 1)
  with monkeypatch.context() as patch:
    _keras_layers(patch)
    old = models.get_model(arch, num_classes=5, filters_factor=1, mode="v2")
    assert _kinds(old) == {keras.layers.BatchNormalization, keras.layers.Conv2D}
    old(images, training=True)  # Moves the statistics away from their initial values.
    expected = old(images, training=False)
    path = tf.train.Checkpoint(model=old).write(str(tmp_path / "ckpt"))
  new = models.get_model(arch, num_classes=5, filters_factor=1, mode="v2")
  assert _kinds(new) == {common.FusedBatchNormalization, common.Conv2D}
  new(images, training=False)
  tf.train.Checkpoint(model=new).read(path).assert_consumed()
  got = new(images, training=False)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-4,
                               atol=1e-4 * float(np.abs(expected[name]).max()), err_msg=name)


def test_training_run_gives_the_losses_of_keras_batch_norm(monkeypatch):
  """Ten SGD steps of ResNet-50 v2 (width 1) with our batch norm and with Keras': the same
  losses, step by step. (Both use our convolution: Keras' hits the oneDNN gradient fault.)"""
  images = tf.random.stateless_uniform((16, 32, 32, 3), [1, 1], -1, 1)
  labels = tf.random.stateless_uniform((16,), [2, 2], 0, 4, tf.int32)

  def losses(model):
    model(images[:1], training=False)
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)

    @tf.function
    def step():
      with tf.GradientTape() as tape:
        logits = model(images, training=True)["logits"]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                    model.trainable_variables))
      return loss
    return [float(step()) for _ in range(10)], model

  keras.utils.set_random_seed(3)
  ours, ours_model = losses(models.get_model("resnet50", num_classes=4, filters_factor=1,
                                             mode="v2", zero_init_residual=True))
  with monkeypatch.context() as patch:
    patch.setattr(common, "FusedBatchNormalization", keras.layers.BatchNormalization)
    keras.utils.set_random_seed(3)
    theirs, their_model = losses(models.get_model("resnet50", num_classes=4, filters_factor=1,
                                                   mode="v2", zero_init_residual=True))
  assert ours[-1] < ours[0] - 0.3  # It learns (16 images, 4 labels).
  np.testing.assert_allclose(ours, theirs, rtol=2e-3, atol=2e-3)
  for a, b in zip(ours_model.non_trainable_variables, their_model.non_trainable_variables):
    np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3, err_msg=a.path)
