"""RevNet-50: ResNet-50 v2 with reversible units (Gomez et al. 2017), forward pass only.

Each block starts with a non-reversible transition unit (a pre-activation bottleneck with
projection shortcut, carrying the block's stride and channel change), followed by
reversible units: the channels split into halves x1, x2 and

  y1 = x1 + F(x2),  y2 = x2 + G(y1)

with F, G pre-activation bottleneck residual functions (no shortcut of their own) that map
C/2 channels to C/2 channels through a C/8 bottleneck. Unit counts [3, 4, 6, 3] and widths
are those of ResNet-50 at the same filters_factor. Backprop stores activations as usual.
`zero_init_residual` zeroes the last conv of every F, G and transition unit (see resnet.py).
"""

from typing import Optional, Tuple

import keras
from keras import ops

from core import architectures
from models import common
from models import resnet

END_POINTS = architectures.facts("revnet50").end_points


class ResidualFunction(keras.layers.Layer):
  """BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1: the F or G of a reversible unit."""

  def __init__(self, filters: int, bn_momentum: float, sync_bn: bool, zero_init: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    width = filters // 4
    bn = lambda n: common.batch_norm(n, bn_momentum, sync_bn)
    self.bn1 = bn("bn1")
    self.conv1 = common.conv(width, 1, "conv1")
    self.bn2 = bn("bn2")
    self.conv2 = common.conv(width, 3, "conv2")
    self.bn3 = bn("bn3")
    self.conv3 = common.conv(filters, 1, "conv3", zero_init=zero_init)

  def build(self, input_shape):
    common.build_sequence(input_shape, self.bn1, self.conv1, self.bn2, self.conv2, self.bn3,
                          self.conv3)

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, self.conv1, self.conv2, self.conv3)

  def call(self, x, training=None):
    x = self.conv1(ops.relu(self.bn1(x, training=training)))
    x = self.conv2(ops.relu(self.bn2(x, training=training)))
    return self.conv3(ops.relu(self.bn3(x, training=training)))


class ReversibleUnit(keras.layers.Layer):
  """y1 = x1 + F(x2), y2 = x2 + G(y1) on the two channel halves; output concat(y1, y2)."""

  def __init__(self, filters: int, bn_momentum: float, sync_bn: bool, zero_init: bool = False,
               name: Optional[str] = None):
    super().__init__(name=name)
    if filters % 2:
      raise ValueError(f"a reversible unit needs an even channel count, got {filters}")
    self.f = ResidualFunction(filters // 2, bn_momentum, sync_bn, zero_init, name="f")
    self.g = ResidualFunction(filters // 2, bn_momentum, sync_bn, zero_init, name="g")
    self.filters = filters

  def build(self, input_shape):
    if input_shape[-1] != self.filters:
      raise ValueError(f"{self.name} expects {self.filters} channels, got {input_shape[-1]}")
    half = tuple(input_shape[:-1]) + (self.filters // 2,)
    common.build_sequence(half, self.f)
    common.build_sequence(half, self.g)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def call(self, x, training=None):
    x1, x2 = ops.split(x, 2, axis=-1)
    y1 = x1 + self.f(x2, training=training)
    y2 = x2 + self.g(y1, training=training)
    return ops.concatenate([y1, y2], axis=-1)

  def inverse(self, y, training=False):
    """Recovers the unit's input from its output (exact up to rounding in inference mode)."""
    y1, y2 = ops.split(y, 2, axis=-1)
    x2 = y2 - self.g(y1, training=training)
    x1 = y1 - self.f(x2, training=training)
    return ops.concatenate([x1, x2], axis=-1)


class RevNet(common.StagedBackbone):
  """RevNet-50 backbone returning {after_root, block1..4, pre_logits[, logits]}."""

  def __init__(self, *, num_classes: Optional[int], filters_factor: int, last_relu: bool,
               root_conv_stride: int, strides: Tuple[int, int, int], bn_momentum: float,
               sync_bn: bool, zero_init_residual: bool, name: str):
    super().__init__(num_classes, name)
    self.root = resnet.Root(16 * filters_factor, root_conv_stride, False, bn_momentum,
                            sync_bn, name="root")
    units = []
    plan = list(resnet.block_plan(filters_factor, strides))
    for b, u, filters, stride in plan:
      if u == 0:
        unit = resnet.BottleneckV2(filters, stride, True, bn_momentum, sync_bn,
                                   zero_init=zero_init_residual, name=f"block{b}_unit1")
      else:
        unit = ReversibleUnit(filters, bn_momentum, sync_bn, zero_init_residual,
                              name=f"block{b}_unit{u + 1}")
      units.append(unit)
    self._set_units(units, [b for b, *_ in plan])
    self._set_final_bn(common.batch_norm("final_bn", bn_momentum, sync_bn), last_relu)


def build(*, num_classes: Optional[int], filters_factor: int, mode: str, last_relu: bool,
          root_conv_stride: int, strides: Tuple[int, int, int], bn_momentum: float,
          sync_bn: bool, zero_init_residual: bool, patch_size: int,
          position_embedding: str, name: Optional[str]) -> keras.Model:
  """Builds RevNet-50; `mode` (RevNet is always pre-activation), `patch_size` and
  `position_embedding` (ViT's) are ignored."""
  del mode, patch_size, position_embedding
  return RevNet(num_classes=num_classes, filters_factor=filters_factor, last_relu=last_relu,
                root_conv_stride=root_conv_stride, strides=strides, bn_momentum=bn_momentum,
                sync_bn=sync_bn, zero_init_residual=zero_init_residual,
                name=name or "revnet50")
