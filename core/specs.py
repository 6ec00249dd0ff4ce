"""Preprocessing specs as text ('resize,to_gray,crop,crop_patches,standardization'): their op
names, and whether a spec makes patches. Free of TensorFlow, so that the grid runner and the
report can use it; datasets/preprocess.py maps the names to ops."""

from typing import List

PATCH_OP = "crop_patches"


def parse_spec(spec: str) -> List[str]:
  """The op names of a spec; '' is no ops."""
  if not spec or not spec.strip():
    return []
  names = [name.strip() for name in spec.split(",")]
  if not all(names):
    raise ValueError(f"preprocessing spec {spec!r} has an empty op name; "
                     "expected comma-separated op names like 'resize,crop,flip_lr'")
  return names


def makes_patches(spec: str) -> bool:
  """Whether `spec` turns an image into patches (`crop_patches`): the input of the patch methods,
  whose backbones use patch strides and whose probes see every patch."""
  return PATCH_OP in parse_spec(spec)
