"""Preprocessing ops that make the per-pixel targets of the reconstruction methods: the colours
of an image beside its lightness (colorization) and a masked region beside the pixels it hides
(inpainting). Registered in the op registry of datasets/preprocess.py like every op
(datasets/__init__.py imports this module).

  ab_target: `target` [H,W,2], the image's a and b of CIE Lab (`rgb_to_lab`); the image stays.
  lightness: the image as its Lab lightness L / 100 in [0, 1], in each of 3 channels (the input
    a backbone built for RGB takes; a value op, so the evaluation input of a colorization export
    and of its random-init baseline).
  mask_region: `target` [H,W,C], the image as it was, and `mask` [H,W,1] (1.0: hidden); the
    image's hidden pixels set to 0, the middle of [-1, 1] (the op comes after '-1_to_1'). The
    region (--inpainting_mask) is the central square of --mask_area of the image, or `blocks`:
    round(16 x --mask_area) squares of a quarter of each side at uniformly random places, which
    may overlap (so they hide at most --mask_area).

ab_target and mask_region make the pretext targets (core/specs.PRETEXT_OPS): an export's
evaluation input is its training spec without them (unmasked images; the lightness stays).
"""

import tensorflow as tf

from core.specs import INPAINTING_MASKS
from datasets.preprocess import (OpFn, PreprocessConfig, map_image, register_op, single_image)

TARGET, MASK = "target", "mask"  # The keys the ops add beside `image`.
BLOCKS_PER_AREA = 16  # `blocks`: squares of a quarter of the side, 1/16 of the image each.

# sRGB (IEC 61966-2-1) under the D65 white point: linear RGB -> CIE XYZ, and the white's XYZ.
SRGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
D65_WHITE = (0.950456, 1.0, 1.088754)
_DELTA = 6.0 / 29.0  # CIE Lab's f(t): t^(1/3) above delta^3, linear below.


def srgb_to_linear(rgb: tf.Tensor) -> tf.Tensor:
  """sRGB values in [0, 1] -> linear light: c / 12.92 up to 0.04045, ((c + 0.055) / 1.055)^2.4
  above."""
  return tf.where(rgb <= 0.04045, rgb / 12.92,
                  tf.pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4))


def rgb_to_lab(rgb: tf.Tensor) -> tf.Tensor:
  """CIE Lab [..., 3] (L in [0, 100], a and b about [-110, 110]) of sRGB values [..., 3] in
  [0, 1]: linear light, XYZ, each divided by the D65 white's, then L = 116 f(Y) - 16,
  a = 500 (f(X) - f(Y)), b = 200 (f(Y) - f(Z)), f(t) = t^(1/3) above (6/29)^3 and
  t / (3 (6/29)^2) + 4/29 below."""
  rgb = tf.convert_to_tensor(rgb, tf.float32)
  xyz = tf.linalg.matvec(tf.constant(SRGB_TO_XYZ), srgb_to_linear(rgb)) / tf.constant(D65_WHITE)
  f = tf.where(xyz > _DELTA ** 3, tf.pow(tf.maximum(xyz, _DELTA ** 3), 1.0 / 3.0),
               xyz / (3.0 * _DELTA ** 2) + 4.0 / 29.0)
  fx, fy, fz = tf.unstack(f, axis=-1)
  return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def _rgb(image: tf.Tensor, op: str) -> tf.Tensor:
  if image.shape[-1] != 3:
    raise ValueError(f"preprocessing op {op!r} needs RGB images [...,3], got shape "
                     f"{image.shape}")
  return image


@register_op("ab_target", geometric=True)
def _ab_target_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """`target`: the a and b of the image's Lab [H,W,2] (module docstring)."""
  del config, is_training

  def fn(example):
    image = _rgb(single_image(example["image"], "ab_target"), "ab_target")
    return {**example, TARGET: rgb_to_lab(image)[..., 1:]}

  return fn


@register_op("lightness")
def _lightness_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The image as L / 100 of its Lab, in 3 channels (module docstring)."""
  del config, is_training

  def lightness(image):
    l = rgb_to_lab(_rgb(image, "lightness"))[..., :1] / 100.0
    return tf.tile(l, [1] * (image.shape.rank - 1) + [3])

  return map_image(lightness)


def region_mask(height: int, width: int, kind: str, area: float) -> tf.Tensor:
  """The mask [H,W,1] (1.0: hidden) of `kind` (INPAINTING_MASKS) hiding `area` of the image
  (module docstring); `blocks` draws its places from TF's random ops."""
  if kind == "center":
    h, w = (max(1, round(side * area ** 0.5)) for side in (height, width))
    top, left = (height - h) // 2, (width - w) // 2
    return tf.pad(tf.ones([h, w, 1]), [[top, height - h - top], [left, width - w - left], [0, 0]])
  if kind != "blocks":
    raise ValueError(f"unknown inpainting mask {kind!r}; valid choices: "
                     f"{', '.join(INPAINTING_MASKS)}")
  h, w = max(1, height // 4), max(1, width // 4)
  count = max(1, round(BLOCKS_PER_AREA * area))
  tops = tf.random.uniform([count], 0, height - h + 1, tf.int32)
  lefts = tf.random.uniform([count], 0, width - w + 1, tf.int32)
  rows = tf.range(height)[None, :, None]
  cols = tf.range(width)[None, None, :]
  inside = ((rows >= tops[:, None, None]) & (rows < tops[:, None, None] + h)
            & (cols >= lefts[:, None, None]) & (cols < lefts[:, None, None] + w))
  return tf.cast(tf.reduce_any(inside, axis=0), tf.float32)[..., None]


@register_op("mask_region", geometric=True)
def _mask_region_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The image with a region hidden, the region's `mask` and the image as `target` (module
  docstring)."""
  del is_training  # Validation masks as training does: the pretext metric needs a region.
  if config.inpainting_mask not in INPAINTING_MASKS:
    raise ValueError(f"unknown inpainting mask {config.inpainting_mask!r}; valid choices: "
                     f"{', '.join(INPAINTING_MASKS)}")

  def fn(example):
    image = single_image(example["image"], "mask_region")
    if image.shape[0] is None or image.shape[1] is None:
      raise ValueError(f"preprocessing op 'mask_region' needs images of a fixed size, got shape "
                       f"{image.shape}; resize or crop first")
    mask = region_mask(image.shape[0], image.shape[1], config.inpainting_mask, config.mask_area)
    return {**example, "image": image * (1.0 - mask), TARGET: image, MASK: mask}

  return fn
