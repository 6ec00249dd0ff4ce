"""What the suite knows of each backbone architecture, free of TensorFlow: its end points in
depth order, its standard width, its weight decay, its family (the architectures a report
compares in one table) and the option that names its variant (ResNet-50's --mode, ViT's patch
size). models/ builds the networks on these
facts; the grid runner and the report read them without importing TensorFlow."""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

MODES = ("v1", "v2")  # ResNet versions: v1 post-activation, v2 pre-activation.
POSITION_EMBEDDINGS = ("learned", "sincos")  # A ViT's (models/vit.py).
# The options a backbone is built from beside its architecture and width, which an export's
# export_info.json and a results file's `source` record.
MODEL_SETTINGS = ("mode", "last_relu", "vit_patch_size", "vit_position_embedding")
LOGITS = "logits"  # The end point after the last layer, where a backbone has a head.

_RESNET_END_POINTS = ("after_root", "block1", "block2", "block3", "block4", "pre_logits")


@dataclasses.dataclass(frozen=True)
class ArchitectureFacts:
  end_points: Tuple[str, ...]  # Without logits, ordered by depth.
  filters_factor: int          # The standard width.
  weight_decay: float          # The 2019 code's L2 weight decay.
  family: str                  # Architectures compared in one report table.
  # The option whose value names the architecture's variant beside its width, e.g. in cell
  # names `<architecture>_<variant_prefix><value>` (resnet50_v2, vit_p16), and that a random-init
  # baseline must share with its trained cells.
  variant: Optional[str] = None
  variant_prefix: str = ""
  # A smoke run's width is a cell's divided by this (default: the standard width), rounded, at
  # least 1: the grid's widths stay apart (ViT-S and ViT-B: 1 and 2 heads).
  smoke_divisor: Optional[int] = None
  # The smallest side of an input it can be built on (VGG19: five 2x poolings leave 1 pixel).
  min_input_side: int = 1
  # The deepest end point that is still a map of the image (a ViT's: its patch tokens), where a
  # dense decoder starts by default (methods/dense.py).
  dense_end_point: Optional[str] = None


ARCHITECTURES: Dict[str, ArchitectureFacts] = {
    "resnet50": ArchitectureFacts(_RESNET_END_POINTS, filters_factor=4, weight_decay=1e-4,
                                  family="resnet", variant="mode", dense_end_point="block4"),
    "revnet50": ArchitectureFacts(_RESNET_END_POINTS, filters_factor=4, weight_decay=1e-4,
                                  family="resnet", dense_end_point="block4"),
    "vgg19": ArchitectureFacts(
        ("block1", "block2", "block3", "block4", "block5", "fc6", "pre_logits"),
        filters_factor=8, weight_decay=5e-4, family="vgg", min_input_side=32,
        dense_end_point="block5"),
}
# The Vision Transformer: filters_factor is its number of heads of 64 dimensions (ViT-Ti 3, ViT-S
# 6, ViT-B 12, the standard); `vit_patch_size` and `vit_position_embedding` are its own settings.
ARCHITECTURES["vit"] = ArchitectureFacts(
    tuple(f"block{i}" for i in range(1, 13)) + ("final_norm", "pre_logits"), filters_factor=12,
    weight_decay=1e-4, family="vit", variant="vit_patch_size",
    variant_prefix="p", smoke_divisor=6, dense_end_point="final_norm")
VARIANT_OPTIONS = tuple(dict.fromkeys(a.variant for a in ARCHITECTURES.values() if a.variant))
FAMILIES = tuple(dict.fromkeys(a.family for a in ARCHITECTURES.values()))  # In report order.
FAMILY_TITLES = {"resnet": "ResNet / RevNet", "vgg": "VGG", "vit": "Vision Transformer"}


def facts(architecture: str) -> ArchitectureFacts:
  """The facts of `architecture`; ValueError naming the valid choices."""
  try:
    return ARCHITECTURES[architecture]
  except KeyError:
    raise ValueError(f"unknown architecture {architecture!r}; valid choices: "
                     f"{', '.join(sorted(ARCHITECTURES))}") from None


def variant_label(architecture: str, value: Callable[[str], Any]) -> Optional[str]:
  """The variant of `architecture` ('v2', 'p16') from `value(option name)`, or None where it has
  none (ArchitectureFacts.variant)."""
  known = ARCHITECTURES.get(architecture)
  if not known or not known.variant:
    return None
  return f"{known.variant_prefix}{value(known.variant)}"


def variant_flags(architecture: str, label: Optional[str]) -> Dict[str, str]:
  """The flag that gives `architecture` the variant `label` (variant_label's inverse)."""
  known = ARCHITECTURES.get(architecture)
  if not known or not known.variant or not label:
    return {}
  return {known.variant: label[len(known.variant_prefix):]}


def family(architecture: str) -> str:
  """The report family of an architecture (an unknown one is a family of its own)."""
  known = ARCHITECTURES.get(architecture)
  return known.family if known else architecture


def depth_order(family_name: str) -> Tuple[str, ...]:
  """Every end point of a family's architectures, logits last, in depth order."""
  order = []
  for arch in ARCHITECTURES.values():
    if arch.family == family_name:
      order += [p for p in arch.end_points if p not in order]
  return tuple(order) + ((LOGITS,) if order else ())


def standard_width(architecture: str) -> Optional[int]:
  """The standard filters_factor of a known architecture (None for an unknown one)."""
  known = ARCHITECTURES.get(architecture)
  return known.filters_factor if known else None
