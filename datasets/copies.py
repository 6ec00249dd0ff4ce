"""Preprocessing ops that stack independently augmented copies of one image, the input of the
instance-discrimination methods: `exemplar_copies` (Exemplar) and `simclr_views` (SimCLR), with
their colour distortions and blur. Registered in the op registry of datasets/preprocess.py like
every op (datasets/__init__.py imports this module)."""

from typing import Callable

import tensorflow as tf

from datasets.preprocess import (LOCAL_VIEWS, OpFn, PreprocessConfig, as_hw, gray3,
                                 inception_crop, map_image, register_op, single_image)


def _with_probability(p: float, fn: Callable[[tf.Tensor], tf.Tensor], image: tf.Tensor):
  """fn(image) with probability `p` (one draw; none for p 0 or 1), else the image."""
  if p <= 0.0:
    return image
  if p >= 1.0:
    return fn(image)
  return tf.cond(tf.random.uniform([]) < p, lambda: fn(image), lambda: image)


def _augmented_copies(op: str, num: int, one_copy: Callable[[tf.Tensor], tf.Tensor]) -> OpFn:
  """An op stacking `num` independent `one_copy`s of an RGB image: [num,h,w,3]."""
  def fn(image):
    image = single_image(image, op)
    if image.shape[-1] != 3:
      raise ValueError(f"preprocessing op {op!r} needs RGB images [H,W,3], got "
                       f"shape {image.shape}")
    return tf.stack([one_copy(image) for _ in range(num)])

  return map_image(fn)



# Colour jitter of `exemplar_copies` (the strengths of the Inception colour distortion).
MAX_BRIGHTNESS_DELTA = 32.0 / 255.0
SATURATION_RANGE = (0.5, 1.5)
MAX_HUE_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)


def _color_jitter(image: tf.Tensor) -> tf.Tensor:
  """Random brightness, saturation, hue and contrast (in this order), clipped to [0, 1]."""
  image = tf.image.random_brightness(image, MAX_BRIGHTNESS_DELTA)
  image = tf.image.random_saturation(image, *SATURATION_RANGE)
  image = tf.image.random_hue(image, MAX_HUE_DELTA)
  image = tf.image.random_contrast(image, *CONTRAST_RANGE)
  return tf.clip_by_value(image, 0.0, 1.0)


@register_op("exemplar_copies", requires=("crop_size",), geometric=True, stacks=True)
def _exemplar_copies_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """`num_of_inception_patches` independently augmented copies [N,h,w,3] of `crop_size`.

  Each copy: random-resized crop (area `min_crop_area`-100%, aspect 3/4-4/3), random flip,
  colour jitter (`_color_jitter`), and grayscale with probability `grayscale_probability`;
  values stay in [0, 1]. Augmented in evaluation too: the copies are the pretext task.
  The class label is kept (exemplar builds its labels from the position in the batch).
  """
  del is_training
  hw = as_hw(config.crop_size, "crop_size")
  num, p = config.num_of_inception_patches, config.grayscale_probability

  def one_copy(image):
    copy = inception_crop(image, hw, True, 1.0, config.min_crop_area)
    copy = _color_jitter(tf.image.random_flip_left_right(copy))
    return _with_probability(p, gray3, copy)

  return _augmented_copies("exemplar_copies", num, one_copy)


# ------------------------------------------------------------------------- SimCLR's two views
COLOR_JITTER_PROBABILITY = 0.8
NUM_VIEWS = 2
BLUR_SIGMA_RANGE = (0.1, 2.0)


def _random_order(image: tf.Tensor, transforms) -> tf.Tensor:
  """`transforms` applied in an order drawn at random (one permutation per call)."""
  order = tf.random.shuffle(tf.range(len(transforms)))
  for i in range(len(transforms)):
    image = tf.switch_case(order[i], [lambda t=t: t(image) for t in transforms])
  return image


def _strong_color_jitter(image: tf.Tensor, strength: float) -> tf.Tensor:
  """SimCLR's colour distortion of strength s: brightness (a factor in [1-0.8s, 1+0.8s]),
  contrast and saturation (the same ranges) and hue (a shift up to 0.2s), in random order;
  values clipped to [0, 1]."""
  amount = 0.8 * strength
  lower, upper = max(0.0, 1.0 - amount), 1.0 + amount
  hue = min(0.2 * strength, 0.5)
  transforms = [
      lambda x: x * tf.random.uniform([], lower, upper),
      lambda x: tf.image.random_contrast(x, lower, upper) if amount > 0 else x,
      lambda x: tf.image.random_saturation(x, lower, upper) if amount > 0 else x,
      lambda x: tf.image.random_hue(x, hue) if hue > 0 else x,
  ]
  return tf.clip_by_value(_random_order(image, transforms), 0.0, 1.0)


def gaussian_blur(image: tf.Tensor, kernel_size: int, sigma) -> tf.Tensor:
  """A separable Gaussian blur of one image [H,W,C] (odd `kernel_size`, reflected borders)."""
  radius = kernel_size // 2
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  kernel /= tf.reduce_sum(kernel)
  channels = image.shape[-1]
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], "REFLECT")
  rows = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  cols = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
  out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
  out = tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")
  return tf.ensure_shape(out[0], image.shape)


def blur_kernel_size(height: int) -> int:
  """SimCLR's kernel: a tenth of the side, odd (at least 3)."""
  return max(3, (height // 10) // 2 * 2 + 1)


@register_op("simclr_views", requires=("crop_size",), geometric=True, stacks=True)
def _simclr_views_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """SimCLR's two independently augmented views [2,h,w,C] of `crop_size`, in [0, 1].

  Each view: random-resized crop (area `min_crop_area`-100%, aspect 3/4-4/3), random flip, colour
  jitter of `color_jitter_strength` with probability 0.8 (`_strong_color_jitter`), grayscale with
  probability `grayscale_probability`, and a Gaussian blur with probability `blur_probability`.
  With `local_crops` N (multi-crop, SwAV and DINO), also N small views [N,h',w',C] of
  `local_crop_size` in `LOCAL_VIEWS`, each a crop of `local_min_crop_area` to
  `local_max_crop_area` of the image, augmented alike (the blur's kernel a tenth of their side).
  Augmented in evaluation too: the views are the pretext task. The class label is kept.
  """
  del is_training
  strength, p_gray, p_blur = (config.color_jitter_strength, config.grayscale_probability,
                              config.blur_probability)

  def one_view(hw, min_area, max_area):
    kernel_size = blur_kernel_size(hw[0])

    def view_of(image):
      view = tf.image.random_flip_left_right(
          inception_crop(image, hw, True, 1.0, min_area, max_area))
      view = _with_probability(COLOR_JITTER_PROBABILITY,
                               lambda x: _strong_color_jitter(x, strength), view)
      view = _with_probability(p_gray, gray3, view)
      sigma = tf.random.uniform([], *BLUR_SIGMA_RANGE)
      return _with_probability(p_blur, lambda x: gaussian_blur(x, kernel_size, sigma), view)
    return view_of

  views = _augmented_copies("simclr_views", NUM_VIEWS, one_view(
      as_hw(config.crop_size, "crop_size"), config.min_crop_area, 1.0))
  if not config.local_crops:
    return views
  local = _augmented_copies("simclr_views", config.local_crops, one_view(
      as_hw(config.local_crop_size, "local_crop_size"), config.local_min_crop_area,
      config.local_max_crop_area))
  return lambda example: {**views(example), LOCAL_VIEWS: local(example)["image"]}
