"""What the suite knows of each backbone architecture, free of TensorFlow: its end points in
depth order, its standard width, its weight decay, whether it has versions (--mode), and its
family (the architectures a report compares in one table). models/ builds the networks on these
facts; the grid runner and the report read them without importing TensorFlow."""

import dataclasses
from typing import Dict, Optional, Tuple

MODES = ("v1", "v2")  # ResNet versions: v1 post-activation, v2 pre-activation.
LOGITS = "logits"  # The end point after the last layer, where a backbone has a head.

_RESNET_END_POINTS = ("after_root", "block1", "block2", "block3", "block4", "pre_logits")


@dataclasses.dataclass(frozen=True)
class ArchitectureFacts:
  end_points: Tuple[str, ...]  # Without logits, ordered by depth.
  filters_factor: int          # The standard width.
  weight_decay: float          # The 2019 code's L2 weight decay.
  has_modes: bool              # Whether --mode (v1/v2) changes it.
  family: str                  # Architectures compared in one report table.


ARCHITECTURES: Dict[str, ArchitectureFacts] = {
    "resnet50": ArchitectureFacts(_RESNET_END_POINTS, filters_factor=4, weight_decay=1e-4,
                                  has_modes=True, family="resnet"),
    "revnet50": ArchitectureFacts(_RESNET_END_POINTS, filters_factor=4, weight_decay=1e-4,
                                  has_modes=False, family="resnet"),
    "vgg19": ArchitectureFacts(
        ("block1", "block2", "block3", "block4", "block5", "fc6", "pre_logits"),
        filters_factor=8, weight_decay=5e-4, has_modes=False, family="vgg"),
}
FAMILIES = tuple(dict.fromkeys(a.family for a in ARCHITECTURES.values()))  # In report order.
FAMILY_TITLES = {"resnet": "ResNet / RevNet", "vgg": "VGG"}


def facts(architecture: str) -> ArchitectureFacts:
  """The facts of `architecture`; ValueError naming the valid choices."""
  try:
    return ARCHITECTURES[architecture]
  except KeyError:
    raise ValueError(f"unknown architecture {architecture!r}; valid choices: "
                     f"{', '.join(sorted(ARCHITECTURES))}") from None


def has_modes(architecture: str) -> bool:
  """Whether --mode changes the architecture (ResNet); unknown architectures have none."""
  known = ARCHITECTURES.get(architecture)
  return bool(known and known.has_modes)


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
