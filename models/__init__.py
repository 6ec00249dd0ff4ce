"""Backbones (ResNet-50 v1/v2, RevNet-50, VGG19-BN, ViT) and the registry that maps names to them.

A model is called as `model(images, training=bool)` on float32 NHWC images (any batch size,
H, W >= 32) and returns a dict {end point name: tensor}, ordered by depth.
"""

from typing import List, Optional

import keras

from core import architectures
from core.registry import Registry
from models import common
from models import resnet
from models import revnet
from models import vgg
from models import vit

ARCHITECTURES: Registry[common.Architecture] = Registry("architecture")
for _name, _build in (("resnet50", resnet.build), ("revnet50", revnet.build),
                      ("vgg19", vgg.build), ("vit", vit.build)):
  ARCHITECTURES.register(_name, common.Architecture(build=_build,
                                                    facts=architectures.facts(_name)))

# Strides for patch inputs (the 2019 code's jigsaw and relative patch location): a stride-1 root
# and no stride in block4, so that a small patch keeps some spatial extent to the end. Patch
# methods train with them; the random-init baseline on patches is built with them too.
PATCH_STRIDES = dict(root_conv_stride=1, strides=(2, 2, 1))


def get_model(architecture: str, *, num_classes: Optional[int] = None,
              filters_factor: Optional[int] = None, mode: str = "v2", last_relu: bool = True,
              root_conv_stride: int = 2, strides: tuple = (2, 2, 2), bn_momentum: float = 0.9,
              sync_bn: bool = False, zero_init_residual: bool = False, vit_patch_size: int = 16,
              vit_position_embedding: str = "learned", name: Optional[str] = None
              ) -> keras.Model:
  """Builds a backbone; `model(images, training=...)` returns a dict of end points.

  `mode` ("v1" / "v2") only changes resnet50 but is validated for all. `last_relu`,
  `root_conv_stride`, `strides` and `zero_init_residual` (every residual branch starts at zero)
  apply to resnet50 and revnet50; vgg19 and vit ignore them. `vit_patch_size` and
  `vit_position_embedding` ("learned" or "sincos") are vit's, which the others ignore (the
  options of the same names).
  `filters_factor=None` means the architecture's default (standard width).
  """
  arch = ARCHITECTURES.get(architecture)
  if filters_factor is None:
    filters_factor = arch.facts.filters_factor
  strides = common.check_args(
      num_classes=num_classes, filters_factor=filters_factor, mode=mode,
      root_conv_stride=root_conv_stride, strides=strides, bn_momentum=bn_momentum)
  return arch.build(
      num_classes=num_classes, filters_factor=filters_factor, mode=mode,
      last_relu=bool(last_relu), root_conv_stride=root_conv_stride, strides=strides,
      bn_momentum=bn_momentum, sync_bn=bool(sync_bn),
      zero_init_residual=bool(zero_init_residual), patch_size=vit_patch_size,
      position_embedding=vit_position_embedding, name=name)


def end_point_names(architecture: str, with_logits: bool = False) -> List[str]:
  """The keys of the model's output dict, ordered by depth."""
  names = list(ARCHITECTURES.get(architecture).facts.end_points)
  return names + [architectures.LOGITS] if with_logits else names


def default_filters_factor(architecture: str) -> int:
  """The standard-width filters_factor (4 for resnet50/revnet50, 8 for vgg19)."""
  return ARCHITECTURES.get(architecture).facts.filters_factor


def default_weight_decay(architecture: str) -> float:
  """The L2 weight decay of the 2019 code (1e-4 for resnet50/revnet50, 5e-4 for vgg19)."""
  return ARCHITECTURES.get(architecture).facts.weight_decay
