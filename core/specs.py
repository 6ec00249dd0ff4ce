"""Preprocessing specs as text ('resize,to_gray,crop,crop_patches,standardization'): their op
names, whether a spec makes patches, the input a representation is evaluated on, what a
deterministic pass of a spec does, and the flags of the preprocessing parameters an evaluation
takes (and which ops read them). Free of TensorFlow, so that the grid runner and the report can
use it; datasets/preprocess.py maps the names to ops."""

from typing import List

PATCH_OP = "crop_patches"
# The ops that turn an image into a pretext example (its rotations, its augmented copies or
# views) and so make the pretext labels: an export's evaluation input is its training spec
# without them (unmasked images, for inpainting). The patch methods make their labels in
# model_fn: their patches stay.
PRETEXT_OPS = ("rotate", "exemplar_copies", "simclr_views", "ab_target", "mask_region")
# The regions 'mask_region' (inpainting) can hide (datasets/dense_targets.py).
INPAINTING_MASKS = ("center", "blocks")
# The ops that set what a backbone is trained to see beyond sizes and ranges (colorization's
# lightness): an evaluation of its export that gives a preprocessing of its own keeps them.
INPUT_DOMAIN_OPS = ("lightness",)
# The ops that leave values in [-1, 1] (inception_preprocess ends with '-1_to_1').
MINUS_ONE_TO_ONE_OPS = ("-1_to_1", "inception_preprocess")
# The ops that change an image only in training (datasets/preprocess.py): a deterministic pass
# (is_training=False: the test split, and every split of the cached probes) leaves it as it is.
# to_gray only below probability 1; at 1 it greys every image, in evaluation too.
TRAINING_ONLY_OPS = ("flip_lr", "to_gray")
# The flags of the preprocessing parameters that an evaluation takes over an export's (and
# that make a random-init baseline's input): fields of datasets.PreprocessConfig.
EVAL_PARAM_FLAGS = ("resize_size", "crop_size", "smaller_size", "grayscale_probability",
                    "splits_per_side", "patch_jitter")
# The ops of an evaluation spec that read each of those (datasets/preprocess.py; a test checks
# that no other op's output changes with it): one that no op of a spec reads leaves its input
# as it is.
PARAM_READERS = {"resize_size": ("resize",), "smaller_size": ("resize_small",),
                 "crop_size": ("crop", "central_crop", "inception_crop", "inception_preprocess"),
                 "grayscale_probability": ("to_gray",), "splits_per_side": ("crop_patches",),
                 "patch_jitter": ("crop_patches",)}
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


def deterministic_spec(spec: str, grayscale_probability: float) -> str:
  """What a deterministic pass (is_training=False) of `spec` does: `spec` without the ops that
  act only in training. Evaluations that see every image through that pass (the cached probes,
  CKA) get the same input from two specs with the same deterministic spec and parameters:
  'resize,flip_lr,-1_to_1' and 'resize,-1_to_1', say."""
  return ",".join(op for op in parse_spec(spec) if op not in TRAINING_ONLY_OPS
                  or (op == "to_gray" and grayscale_probability >= 1.0))


def params_read(spec: str) -> List[str]:
  """The parameters of EVAL_PARAM_FLAGS that some op of `spec` reads."""
  names = set(parse_spec(spec))
  return [p for p in EVAL_PARAM_FLAGS if names & set(PARAM_READERS[p])]


def missing_input_ops(export_spec: str, spec: str) -> List[str]:
  """The INPUT_DOMAIN_OPS of an export's evaluation spec that `spec` lacks."""
  own = parse_spec(spec)
  return [op for op in parse_spec(export_spec) if op in INPUT_DOMAIN_OPS and op not in own]
