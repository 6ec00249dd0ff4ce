"""Preprocessing specs as text ('resize,to_gray,crop,crop_patches,standardization'): their op
names, whether a spec makes patches, the input a representation is evaluated on, and the flags
of the preprocessing parameters an evaluation takes. Free of TensorFlow, so that the grid runner
and the report can use it; datasets/preprocess.py maps the names to ops."""

from typing import List

PATCH_OP = "crop_patches"
# The ops that turn an image into a pretext example (its rotations, its augmented copies or
# views) and so make the pretext labels: an export's evaluation input is its training spec
# without them. The patch methods make their labels in model_fn: their patches stay.
PRETEXT_OPS = ("rotate", "exemplar_copies", "simclr_views")
# The flags of the preprocessing parameters that an evaluation takes over an export's (and
# that make a random-init baseline's input): fields of datasets.PreprocessConfig.
EVAL_PARAM_FLAGS = ("resize_size", "crop_size", "smaller_size", "grayscale_probability",
                    "splits_per_side", "patch_jitter")
# Of those, the sizes: an evaluation that sets one takes all of its parameters from its flags.
SIZE_FLAGS = ("resize_size", "crop_size", "smaller_size")


def sets_own_params(flags) -> bool:
  """Whether an evaluation's flags (a mapping of EVAL_PARAM_FLAGS' values) set a size, and so
  give all of its preprocessing parameters instead of the export's."""
  return any(flags.get(k) is not None for k in SIZE_FLAGS)


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


def representation_spec(spec: str) -> str:
  """The evaluation preprocessing of an export trained with `spec`: `spec` without the pretext
  ops (the rotations, copies and views that make the pretext labels)."""
  return ",".join(op for op in parse_spec(spec) if op not in PRETEXT_OPS)
