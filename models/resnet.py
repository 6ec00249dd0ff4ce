"""ResNet-50, post-activation (v1) and pre-activation (v2), with a width multiplier.

Bottleneck units as in the 2019 code: the stride sits in the 3x3 conv, and a projection
shortcut (1x1 conv with the stride) appears where the shape changes, i.e. in the first
unit of each block. At filters_factor=4 the widths are the standard 64 / 256..2048.

`zero_init_residual` (off in the 2019 code) starts every residual branch at zero: the last BN
scale of a v1 unit, the last conv of a v2 unit. The network then starts as its shortcut path
and trains much faster early on (Goyal et al. 2017), which short runs on a CPU need.
"""

from typing import Optional, Tuple

import keras
from keras import ops

from core import architectures
from models import common

END_POINTS = architectures.facts("resnet50").end_points
UNITS_PER_BLOCK = (3, 4, 6, 3)


class BottleneckV1(keras.layers.Layer):
  """Post-activation bottleneck: conv-BN-ReLU x2, conv-BN, add shortcut, ReLU."""

  def __init__(self, filters: int, strides: int, project: bool, bn_momentum: float,
               sync_bn: bool, final_relu: bool = True, zero_init: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    width = filters // 4
    bn = lambda n, zero=False: common.batch_norm(n, bn_momentum, sync_bn, zero_init=zero)
    self.final_relu = final_relu
    self.proj = common.conv(filters, 1, "proj", strides=strides) if project else None
    self.proj_bn = bn("proj_bn") if project else None
    self.conv1 = common.conv(width, 1, "conv1")
    self.bn1 = bn("bn1")
    self.pad2 = common.fixed_padding(3, "pad2") if strides > 1 else None
    self.conv2 = common.conv(width, 3, "conv2", strides=strides)
    self.bn2 = bn("bn2")
    self.conv3 = common.conv(filters, 1, "conv3")
    self.bn3 = bn("bn3", zero_init)

  def build(self, input_shape):
    common.build_sequence(input_shape, self.proj, self.proj_bn)
    common.build_sequence(input_shape, self.conv1, self.bn1, self.pad2, self.conv2, self.bn2,
                          self.conv3, self.bn3)

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, self.conv1, self.pad2, self.conv2, self.conv3)

  def call(self, x, training=None):
    shortcut = x
    if self.proj is not None:
      shortcut = self.proj_bn(self.proj(x), training=training)
    y = ops.relu(self.bn1(self.conv1(x), training=training))
    if self.pad2 is not None:
      y = self.pad2(y)
    y = ops.relu(self.bn2(self.conv2(y), training=training))
    y = self.bn3(self.conv3(y), training=training)
    y = y + shortcut
    return ops.relu(y) if self.final_relu else y


class BottleneckV2(keras.layers.Layer):
  """Pre-activation bottleneck: BN-ReLU-conv x3 plus shortcut (projected from the pre-activation)."""

  def __init__(self, filters: int, strides: int, project: bool, bn_momentum: float,
               sync_bn: bool, zero_init: bool = False, name: Optional[str] = None):
    super().__init__(name=name)
    width = filters // 4
    bn = lambda n: common.batch_norm(n, bn_momentum, sync_bn)
    self.preact_bn = bn("preact_bn")
    self.proj = common.conv(filters, 1, "proj", strides=strides) if project else None
    self.conv1 = common.conv(width, 1, "conv1")
    self.bn1 = bn("bn1")
    self.pad2 = common.fixed_padding(3, "pad2") if strides > 1 else None
    self.conv2 = common.conv(width, 3, "conv2", strides=strides)
    self.bn2 = bn("bn2")
    self.conv3 = common.conv(filters, 1, "conv3", zero_init=zero_init)

  def build(self, input_shape):
    common.build_sequence(input_shape, self.preact_bn, self.proj)
    common.build_sequence(input_shape, self.conv1, self.bn1, self.pad2, self.conv2, self.bn2,
                          self.conv3)

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, self.conv1, self.pad2, self.conv2, self.conv3)

  def call(self, x, training=None):
    preact = ops.relu(self.preact_bn(x, training=training))
    shortcut = x if self.proj is None else self.proj(preact)
    y = self.conv1(preact)
    y = ops.relu(self.bn1(y, training=training))
    if self.pad2 is not None:
      y = self.pad2(y)
    y = self.conv2(y)
    y = ops.relu(self.bn2(y, training=training))
    y = self.conv3(y)
    return y + shortcut


class Root(keras.layers.Layer):
  """7x7 conv (BN-ReLU in v1 only) and 3x3 max-pool with stride 2: the `after_root` end point."""

  def __init__(self, filters: int, strides: int, post_activation: bool, bn_momentum: float,
               sync_bn: bool, name: Optional[str] = None):
    super().__init__(name=name)
    self.pad = common.fixed_padding(7, "pad") if strides > 1 else None
    self.conv = common.conv(filters, 7, "conv", strides=strides)
    self.bn = common.batch_norm("bn", bn_momentum, sync_bn) if post_activation else None
    self.pool = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool")

  def build(self, input_shape):
    common.build_sequence(input_shape, self.pad, self.conv, self.bn, self.pool)

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, self.pad, self.conv, self.pool)

  def call(self, x, training=None):
    if self.pad is not None:
      x = self.pad(x)
    x = self.conv(x)
    if self.bn is not None:
      x = ops.relu(self.bn(x, training=training))
    return self.pool(x)


def block_plan(filters_factor: int, strides: Tuple[int, int, int]):
  """Yields (block index 1..4, unit index 0.., output filters, stride) for every unit."""
  for b, (n_units, block_stride) in enumerate(zip(UNITS_PER_BLOCK, (1,) + tuple(strides))):
    filters = 64 * filters_factor * 2 ** b
    for u in range(n_units):
      yield b + 1, u, filters, block_stride if u == 0 else 1


class ResNet(common.StagedBackbone):
  """ResNet-50 backbone returning {after_root, block1..4, pre_logits[, logits]}."""

  def __init__(self, *, num_classes: Optional[int], filters_factor: int, mode: str,
               last_relu: bool, root_conv_stride: int, strides: Tuple[int, int, int],
               bn_momentum: float, sync_bn: bool, zero_init_residual: bool, name: str):
    super().__init__(num_classes, name)
    self.mode = mode
    v1 = mode == "v1"
    self.root = Root(16 * filters_factor, root_conv_stride, v1, bn_momentum, sync_bn,
                     name="root")
    units = []
    plan = list(block_plan(filters_factor, strides))
    for i, (b, u, filters, stride) in enumerate(plan):
      kwargs = dict(filters=filters, strides=stride, project=u == 0, bn_momentum=bn_momentum,
                    sync_bn=sync_bn, zero_init=zero_init_residual, name=f"block{b}_unit{u + 1}")
      if v1:
        # `last_relu` governs the ReLU after the addition of the very last unit.
        unit = BottleneckV1(final_relu=last_relu or i < len(plan) - 1, **kwargs)
      else:
        unit = BottleneckV2(**kwargs)
      units.append(unit)
    self._set_units(units, [b for b, *_ in plan])
    # v1 applies `last_relu` inside its last unit; v2 ends with BN-ReLU before pooling.
    self._set_final_bn(None if v1 else common.batch_norm("final_bn", bn_momentum, sync_bn),
                       last_relu)


def build(*, num_classes: Optional[int], filters_factor: int, mode: str, last_relu: bool,
          root_conv_stride: int, strides: Tuple[int, int, int], bn_momentum: float,
          sync_bn: bool, zero_init_residual: bool, patch_size: int,
          position_embedding: str, name: Optional[str]) -> keras.Model:
  """Builds ResNet-50 in `mode` "v1" or "v2"; `patch_size` and `position_embedding` (ViT's) are
  ignored."""
  del patch_size, position_embedding
  return ResNet(num_classes=num_classes, filters_factor=filters_factor, mode=mode,
                last_relu=last_relu, root_conv_stride=root_conv_stride, strides=strides,
                bn_momentum=bn_momentum, sync_bn=sync_bn, zero_init_residual=zero_init_residual,
                name=name or "resnet50")
