"""VGG19 with BatchNorm (no dropout), with a width multiplier; filters_factor=8 is standard.

Blocks of [2, 2, 4, 4, 4] 3x3 conv-BN-ReLU with 8*ff*{1, 2, 4, 8, 8} filters, each ending
with a 2x2 max-pool (the `blockN` end point is the pooled map). `fc6` is a VALID conv acting
as a fully connected layer over the final map: 7x7 when the map is at least 7x7 (the
classic fc6 at 224x224), else a kernel the size of the map, so the fc6 output is 1x1 for
any input from 32x32 up to 255x255. Its kernel size is fixed when the model is built, from
the first input's spatial size (7x7 if that size is unknown): later inputs must give a
final map at least as large (a larger map yields a spatial fc6). `fc7` is a 1x1 conv; its
global average pool is `pre_logits`. The input must be at least 32x32.
"""

from typing import Optional

import keras
from keras import ops
import tensorflow as tf

from core import architectures
from models import common

END_POINTS = architectures.facts("vgg19").end_points
CONVS_PER_BLOCK = (2, 2, 4, 4, 4)
WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)
FC6_MAX_KERNEL = 7


class ConvBNReLU(keras.layers.Layer):
  """Bias-free conv, BatchNorm, ReLU."""

  def __init__(self, filters, kernel_size, padding: str, bn_momentum: float, sync_bn: bool,
               name: Optional[str] = None):
    super().__init__(name=name)
    self.conv = common.conv(filters, kernel_size, "conv", padding=padding)
    self.bn = common.batch_norm("bn", bn_momentum, sync_bn)

  def build(self, input_shape):
    common.build_sequence(input_shape, self.conv, self.bn)

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, self.conv)

  def call(self, x, training=None):
    return ops.relu(self.bn(self.conv(x), training=training))


def fc6_kernel_size(height: Optional[int], width: Optional[int]):
  """The fc6 kernel for an input of this size: the final map's size, at most 7x7."""
  def one(size):
    if size is None:
      return FC6_MAX_KERNEL
    final = size
    for _ in CONVS_PER_BLOCK:
      final //= 2
    if final < 1:
      least = architectures.facts("vgg19").min_input_side
      raise ValueError(f"vgg19 needs inputs of at least {least}x{least}, got a side of {size}")
    return min(FC6_MAX_KERNEL, final)
  return one(height), one(width)


class VGG(common.Backbone):
  """VGG19 backbone returning {block1..5, fc6, pre_logits[, logits]}."""

  def __init__(self, *, num_classes: Optional[int], filters_factor: int, bn_momentum: float,
               sync_bn: bool, name: str):
    super().__init__(num_classes, name)
    self._bn_args = (bn_momentum, sync_bn)
    self.fc_filters = 512 * filters_factor
    convs = []
    block_ends = []
    for b, (n_convs, mult) in enumerate(zip(CONVS_PER_BLOCK, WIDTH_MULTIPLIERS)):
      for c in range(n_convs):
        convs.append(ConvBNReLU(8 * filters_factor * mult, 3, "same", *self._bn_args,
                                name=f"block{b + 1}_conv{c + 1}"))
      block_ends.append(len(convs) - 1)
    self._conv_names = self._add_sequence(convs)
    self._block_ends = tuple(block_ends)
    self.pool = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool")
    self.fc6 = None  # made in build(): its kernel depends on the input size
    self.fc7 = ConvBNReLU(self.fc_filters, 1, "valid", *self._bn_args, name="fc7")

  def _convs(self):
    """The 16 conv-BN-ReLU layers, in order."""
    return [getattr(self, n) for n in self._conv_names]

  def build(self, input_shape):
    if self.fc6 is not None:  # built before (`model.build` after a call): keep fc6 as is
      return
    kernel = fc6_kernel_size(input_shape[1], input_shape[2])
    self.fc6 = ConvBNReLU(self.fc_filters, kernel, "valid", *self._bn_args, name="fc6")
    shape = tuple(input_shape)
    for i, layer in enumerate(self._convs()):
      shape = common.build_sequence(shape, layer)
      if i in self._block_ends:
        shape = common.build_sequence(shape, self.pool)
    shape = common.build_sequence(shape, self.fc6, self.fc7)
    self._build_head(shape)

  def _check_fc6_input(self, x):
    """Fails with a readable message when the final map is smaller than fc6's kernel."""
    kernel = self.fc6.conv.kernel_size
    message = (f"{self.name}: fc6 was built with a {kernel[0]}x{kernel[1]} kernel (set by the "
               "input size the model was built with, 7x7 if unknown) but this input's final "
               "map is smaller. Build (first call) the model on inputs of the size you use.")
    static = x.shape[1:3]
    if None not in static:
      if static[0] < kernel[0] or static[1] < kernel[1]:
        raise ValueError(message + f" Final map: {static[0]}x{static[1]}.")
      return x
    with tf.control_dependencies([tf.debugging.assert_greater_equal(
        tf.shape(x)[1:3], tf.constant(kernel, tf.int32), message=message)]):
      return tf.identity(x)

  def call(self, images, training=None):
    end_points = {}
    x = images
    for i, layer in enumerate(self._convs()):
      x = layer(x, training=training)
      if i in self._block_ends:
        x = self.pool(x)
        end_points[f"block{self._block_ends.index(i) + 1}"] = x
    x = self._check_fc6_input(x)
    x = self.fc6(x, training=training)
    end_points["fc6"] = x
    x = self.fc7(x, training=training)
    return self._finish(end_points, x)


def build(*, num_classes: Optional[int], filters_factor: int, mode: str, last_relu: bool,
          root_conv_stride: int, strides, bn_momentum: float, sync_bn: bool,
          zero_init_residual: bool, patch_size: int,
          position_embedding: str, name: Optional[str]) -> keras.Model:
  """Builds VGG19-BN; `mode`, `last_relu`, `root_conv_stride`, `strides`,
  `zero_init_residual` (VGG has no residual branches), `patch_size` and `position_embedding`
  (ViT's) are ignored."""
  del mode, last_relu, root_conv_stride, strides, zero_init_residual, patch_size
  del position_embedding
  return VGG(num_classes=num_classes, filters_factor=filters_factor, bn_momentum=bn_momentum,
             sync_bn=sync_bn, name=name or "vgg19")
