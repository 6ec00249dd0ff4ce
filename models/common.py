"""Pieces shared by the backbones: layer factories, argument checks and the model base class."""

import dataclasses
from typing import Callable, Optional, Tuple

import keras
from keras import ops
import tensorflow as tf

from core.architectures import ArchitectureFacts, MODES

BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What the registry holds for one architecture: its builder and its facts (end points in
  depth order, standard width, weight decay: core/architectures.py)."""
  build: Callable[..., keras.Model]
  facts: ArchitectureFacts


class FusedBatchNormalization(keras.layers.BatchNormalization):
  """Keras' BatchNormalization computed by TensorFlow's fused kernel where it applies.

  Keras 3 on TensorFlow normalises with separate ops (`tf.nn.moments`, then
  `tf.nn.batch_normalization`), forward and backward; `FusedBatchNormV3` (oneDNN on CPUs, cuDNN
  on GPUs) does each pass in one op. The fused path is taken for a local (not synchronised)
  normalisation over the last axis of a 2-D or 4-D float32 or 16-bit input, without mask or
  renormalisation, with `training` a Python bool; anything else goes to Keras' own path. The
  variables, their names, the initialisers and the moving statistics are Keras': the moving
  variance is updated with the biased batch variance (as `tf.nn.moments` gives it), not the
  kernel's Bessel-corrected one, so checkpoints and exports of either layer restore into the
  other.
  """

  def _fused_applies(self, inputs, training, mask) -> bool:
    return (not self.synchronized and not self.renorm and mask is None
            and inputs.dtype in (tf.float16, tf.bfloat16, tf.float32)
            and self.axis in (-1, len(inputs.shape) - 1) and len(inputs.shape) in (2, 4)
            and (training is None or isinstance(training, bool)) and self.scale)

  def call(self, inputs, training=None, mask=None):
    if not self._fused_applies(inputs, training, mask):
      return super().call(inputs, training=training, mask=mask)
    x = inputs
    if len(x.shape) == 2:
      x = x[:, None, None, :]
    gamma = tf.cast(self.gamma, tf.float32)
    beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros_like(gamma)
    batch_stats = bool(training) and self.trainable
    if batch_stats:
      empty = tf.zeros([0], tf.float32)
      y, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
          is_training=True)
      count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
      biased = variance * (count - 1.0) / tf.maximum(count, 1.0)
      momentum = self.momentum
      self.moving_mean.assign(
          tf.cast(self.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
      self.moving_variance.assign(
          tf.cast(self.moving_variance, tf.float32) * momentum + biased * (1.0 - momentum))
    else:
      y, *_ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=tf.cast(self.moving_mean, tf.float32),
          variance=tf.cast(self.moving_variance, tf.float32), epsilon=self.epsilon,
          is_training=False)
    if len(inputs.shape) == 2:
      y = y[:, 0, 0, :]
    return ops.cast(y, self.compute_dtype)


def batch_norm(name: str, momentum: float, synchronized: bool,
               zero_init: bool = False, center: bool = True) -> keras.layers.Layer:
  """BatchNorm as every backbone uses it (epsilon 1e-5, optionally cross-replica), on the fused
  kernel where that applies (`FusedBatchNormalization`).
  `zero_init`: zero scale, for the last BN of a residual branch (`zero_init_residual`);
  `center=False`: no offset (beta)."""
  return FusedBatchNormalization(
      momentum=momentum, epsilon=BN_EPSILON, synchronized=synchronized, center=center,
      gamma_initializer="zeros" if zero_init else "ones", name=name)


class Conv2D(keras.layers.Conv2D):
  """Keras' Conv2D (channels last, no dilation or groups), with the convolutions that are matrix
  products computed as one: a 1x1 kernel (after subsampling, for a stride), and a stride-1 SAME
  convolution of a 1x1 map (only the kernel's centre meets the map; the other taps meet the
  padding and get zero gradients, as in the convolution). On a 2-core AVX2 CPU with oneDNN, the
  matrix product and its gradients took 1.2-2.5x less time than the convolution's at the 1x1
  convolutions of ResNet-50 (batch 64-256, 1x1 to 8x8 maps). The variables are Keras' own.
  """

  def _as_matmul(self, inputs) -> bool:
    if (self.data_format != "channels_last" or self.groups != 1
        or tuple(self.dilation_rate) != (1, 1) or len(inputs.shape) != 4):
      return False
    if tuple(self.kernel_size) == (1, 1):
      return True
    odd = all(k % 2 == 1 for k in self.kernel_size)
    return (odd and self.padding == "same" and tuple(self.strides) == (1, 1)
            and tuple(inputs.shape[1:3]) == (1, 1))

  def convolution_op(self, inputs, kernel):
    if not self._as_matmul(inputs):
      return super().convolution_op(inputs, kernel)
    sh, sw = self.strides
    if (sh, sw) != (1, 1):
      inputs = inputs[:, ::sh, ::sw, :]
    kh, kw = self.kernel_size
    matrix = kernel[kh // 2, kw // 2]  # [in, out]: the whole 1x1 kernel, or the centre tap.
    shape = tf.shape(inputs)
    flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
    return tf.reshape(tf.matmul(flat, matrix), tf.concat([shape[:-1], [self.filters]], 0))


def conv(filters: int, kernel_size: int, name: str, strides: int = 1,
         padding: Optional[str] = None, zero_init: bool = False) -> keras.layers.Layer:
  """A bias-free convolution (a BatchNorm always follows or precedes it).

  Strided convolutions default to VALID padding: put `fixed_padding` in front of them.
  `zero_init`: zero kernel, for the last conv of a residual branch (`zero_init_residual`).
  """
  if padding is None:
    padding = "same" if strides == 1 else "valid"
  return Conv2D(
      filters, kernel_size, strides=strides, padding=padding, use_bias=False,
      kernel_initializer="zeros" if zero_init else "he_normal", name=name)


def fixed_padding(kernel_size: int, name: str) -> keras.layers.Layer:
  """Symmetric zero padding for a strided VALID conv, the same whatever the input's parity.

  TF's SAME padding puts the extra row at the bottom for even inputs, which shifts the
  sampling grid; the 2019 code padded like this instead. Output sizes equal SAME's.
  """
  total = kernel_size - 1
  before, after = total // 2, total - total // 2
  return keras.layers.ZeroPadding2D(((before, after), (before, after)), name=name)


def output_shape(shape, *layers):
  """The shape after applying `layers` (None entries skipped) in order, without building."""
  shape = tuple(shape)
  for layer in layers:
    if layer is not None:
      shape = tuple(layer.compute_output_shape(shape))
  return shape


def build_sequence(shape, *layers):
  """Builds `layers` (None entries skipped) applied in order to `shape`; returns the output shape.

  Composite layers build their children this way from shapes alone, so that building a
  model (first call or `model.build`) creates every variable without a symbolic trace.
  """
  shape = tuple(shape)
  for layer in layers:
    if layer is not None:
      if not layer.built:
        layer.build(shape)
      shape = tuple(layer.compute_output_shape(shape))
  return shape


class Backbone(keras.Model):
  """Base of the backbones: `call` returns a dict of end points; optional logits head.

  Subclasses fill the spatial end points and call `_finish` with the last feature map.
  """

  def __init__(self, num_classes: Optional[int], name: str):
    super().__init__(name=name)
    self.num_classes = num_classes
    self.logits_layer = (
        # Small initial weights: the head starts near uniform predictions (loss ~ log K).
        keras.layers.Dense(num_classes, name="logits",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))
        if num_classes else None)

  def _add_sequence(self, layers) -> Tuple[str, ...]:
    """Attaches `layers` as attributes named after them; returns the names, in order.

    tf.train.Checkpoint does not see layers kept in a Python list of a Keras 3 model (Keras
    wraps lists in its own TrackedList), so every layer must be an attribute of its own.
    """
    names = []
    for layer in layers:
      if hasattr(self, layer.name):
        raise ValueError(f"{self.name}: layer name {layer.name!r} is already taken")
      setattr(self, layer.name, layer)
      names.append(layer.name)
    return tuple(names)

  def _build_head(self, features_shape):
    """Builds the logits head for the shape of the map that `pre_logits` pools."""
    if self.logits_layer is not None and not self.logits_layer.built:
      self.logits_layer.build((features_shape[0], features_shape[-1]))

  def _finish(self, end_points: dict, features) -> dict:
    """Adds `pre_logits` (global average pool of `features`) and, with a head, `logits`."""
    pre_logits = ops.mean(features, axis=(1, 2))
    end_points["pre_logits"] = pre_logits
    if self.logits_layer is not None:
      end_points["logits"] = self.logits_layer(pre_logits)
    return end_points


class StagedBackbone(Backbone):
  """Root, then residual units grouped in blocks, then an optional final BN(-ReLU).

  End points: `after_root`, `block1`.. (the output of each block's last unit), `pre_logits`.
  Subclasses create `self.root`, then call `_set_units(units, block_of_unit)` and
  `_set_final_bn(bn or None, last_relu)`.
  """

  def _set_units(self, units, block_of_unit):
    self._unit_names = self._add_sequence(units)
    self._block_ends = tuple(i for i, b in enumerate(block_of_unit)
                             if i == len(block_of_unit) - 1 or block_of_unit[i + 1] != b)

  def _set_final_bn(self, final_bn, last_relu: bool):
    self.final_bn = final_bn
    self.last_relu = last_relu

  def _units(self):
    """The residual units, in order."""
    return [getattr(self, n) for n in self._unit_names]

  def build(self, input_shape):
    shape = build_sequence(input_shape, self.root, *self._units(), self.final_bn)
    self._build_head(shape)

  def call(self, images, training=None):
    end_points = {}
    x = self.root(images, training=training)
    end_points["after_root"] = x
    for i, unit in enumerate(self._units()):
      x = unit(x, training=training)
      if i in self._block_ends:
        end_points[f"block{self._block_ends.index(i) + 1}"] = x
    if self.final_bn is not None:
      x = self.final_bn(x, training=training)
      if self.last_relu:
        x = ops.relu(x)
    return self._finish(end_points, x)


def check_args(*, num_classes, filters_factor, mode, root_conv_stride, strides,
               bn_momentum) -> Tuple[int, ...]:
  """Validates the common `get_model` arguments; returns `strides` as a tuple."""
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")
  if (isinstance(filters_factor, bool) or not isinstance(filters_factor, int)
      or filters_factor <= 0):
    raise ValueError(f"filters_factor must be a positive integer, got {filters_factor!r}")
  if num_classes is not None and (
      isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes <= 0):
    raise ValueError(f"num_classes must be None or a positive integer, got {num_classes!r}")
  if root_conv_stride not in (1, 2) or isinstance(root_conv_stride, bool):
    raise ValueError(f"root_conv_stride must be 1 or 2, got {root_conv_stride!r}")
  try:
    strides = tuple(strides)
  except TypeError:
    raise ValueError(f"strides must be a 3-tuple of 1 or 2, got {strides!r}") from None
  if len(strides) != 3 or any(s not in (1, 2) or isinstance(s, bool) for s in strides):
    raise ValueError(f"strides must be a 3-tuple of 1 or 2, got {strides!r}")
  if not 0.0 <= bn_momentum < 1.0:
    raise ValueError(f"bn_momentum must be in [0, 1), got {bn_momentum!r}")
  return tuple(int(s) for s in strides)
