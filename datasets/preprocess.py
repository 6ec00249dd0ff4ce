"""Preprocessing ops: short string specs -> functions on example dicts.

A spec is a comma-separated list of op names, applied left to right, e.g.
`resize,to_gray,crop,flip_lr,-1_to_1` or `inception_preprocess,rotate`. Each
name maps, through `PREPROCESS_OPS`, to a builder
`(config: PreprocessConfig, is_training: bool) -> fn(dict) -> dict`.

Examples are dicts with `image` float32 in [0, 1], `[H, W, C]` (as `get_data`
passes them), and `label` int32. Ops that stack copies or patches (`rotate`)
turn the image into `[P, H, W, C]`; value ops (`-1_to_1`, `0_to_1`,
`standardization`, `to_gray`) work on both forms, geometric ops only on a single
image, which `validate_spec` checks before any data is read.

Random ops use TF's stateful random ops without op seeds, so they follow the
global seed (`tf.random.set_seed`) when the caller sets one.

To add an op: decorate its builder with `register_op(name, requires=(...),
geometric=..., stacks=...)`. `requires` names the `PreprocessConfig` fields that
must be set; `geometric` ops need a single image `[H, W, C]`; `stacks` ops output
`[P, H, W, C]`. Ops that fix the image size should give it a static shape
(`set_shape`/`ensure_shape`): `get_data` batches only images of known size.
"""

import dataclasses
from typing import Callable, Optional, Sequence, Tuple, Union

import tensorflow as tf

from core.registry import Registry
from core.specs import parse_spec

Size = Union[int, Tuple[int, int]]
Example = dict
OpFn = Callable[[Example], Example]

PREPROCESS_OPS = Registry("preprocessing op")


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """Parameters of the preprocessing ops; an op that needs an unset one fails validation.

  Sizes are an int (square) or (height, width).
  """
  resize_size: Optional[Size] = None
  smaller_size: Optional[int] = None
  crop_size: Optional[Size] = None
  grayscale_probability: float = 0.0
  central_crop_fraction: float = 0.875
  min_crop_area: float = 0.08             # random-resized crops: the smallest share of the image
  splits_per_side: int = 3                # crop_patches: a splits_per_side^2 grid
  patch_jitter: int = 0                   # crop_patches: pixels of jitter per patch
  num_of_inception_patches: int = 8       # exemplar_copies: copies per image
  color_jitter_strength: float = 1.0      # simclr_views: s of the colour jitter
  blur_probability: float = 0.5           # simclr_views: of a Gaussian blur per view

  def __post_init__(self):
    for name in ("resize_size", "crop_size"):
      value = getattr(self, name)
      if value is not None:
        _as_hw(value, name)
    if self.smaller_size is not None and not _is_positive_int(self.smaller_size):
      raise ValueError(f"smaller_size must be a positive int, got {self.smaller_size!r}")
    if not 0.0 <= self.grayscale_probability <= 1.0:
      raise ValueError(
          f"grayscale_probability must be in [0, 1], got {self.grayscale_probability!r}")
    if not 0.0 < self.min_crop_area <= 1.0:
      raise ValueError(f"min_crop_area must be in (0, 1], got {self.min_crop_area!r}")
    if not 0.0 <= self.blur_probability <= 1.0:
      raise ValueError(f"blur_probability must be in [0, 1], got {self.blur_probability!r}")
    if not 0.0 <= self.color_jitter_strength:
      raise ValueError(
          f"color_jitter_strength must be >= 0, got {self.color_jitter_strength!r}")
    if not 0.0 < self.central_crop_fraction <= 1.0:
      raise ValueError(
          f"central_crop_fraction must be in (0, 1], got {self.central_crop_fraction!r}")
    for name in ("splits_per_side", "num_of_inception_patches"):
      if not _is_positive_int(getattr(self, name)):
        raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
    if (isinstance(self.patch_jitter, bool) or not isinstance(self.patch_jitter, int)
        or self.patch_jitter < 0):
      raise ValueError(f"patch_jitter must be an int >= 0, got {self.patch_jitter!r}")

  @classmethod
  def of(cls, config) -> "PreprocessConfig":
    """The preprocessing parameters of a config (its fields of the same names)."""
    return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)
                  if getattr(config, f.name, None) is not None})


def _is_positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _as_hw(value: Size, name: str) -> Tuple[int, int]:
  """An int or (h, w) as (h, w), checked."""
  if _is_positive_int(value):
    return value, value
  if (isinstance(value, (tuple, list)) and len(value) == 2
      and all(_is_positive_int(v) for v in value)):
    return int(value[0]), int(value[1])
  raise ValueError(f"{name} must be a positive int or (height, width), got {value!r}")


def register_op(name: str, requires: Sequence[str] = (), geometric: bool = False,
                stacks: bool = False):
  """Decorator registering an op builder in `PREPROCESS_OPS`, with what validation needs."""
  def decorator(builder):
    builder.requires = tuple(requires)
    builder.geometric = geometric
    builder.stacks = stacks
    PREPROCESS_OPS.register(name, builder)
    return builder
  return decorator


def validate_spec(spec: str, config: PreprocessConfig) -> list:
  """Checks a spec against the registry and `config`; returns its op names.

  Raises ValueError for an unknown op (listing the valid ones), an op whose
  parameter is not set, or a geometric op after one that stacked copies.
  """
  names = parse_spec(spec)
  stacked_by = None
  for name in names:
    if name not in PREPROCESS_OPS:
      raise ValueError(f"unknown preprocessing op {name!r} in spec {spec!r}; "
                       f"valid ops: {', '.join(PREPROCESS_OPS.names())}")
    builder = PREPROCESS_OPS.get(name)
    for field in getattr(builder, "requires", ()):
      if getattr(config, field, None) is None:
        raise ValueError(f"preprocessing op {name!r} needs {field}, which is not set "
                         f"(spec {spec!r}); set --{field}")
    if getattr(builder, "geometric", False) and stacked_by is not None:
      raise ValueError(
          f"preprocessing op {name!r} works on a single image [H,W,C], but {stacked_by!r} "
          f"before it stacked copies into [P,H,W,C] (spec {spec!r}); move {name!r} before "
          f"{stacked_by!r}")
    if getattr(builder, "stacks", False):
      stacked_by = name
  return names


def get_preprocess_fn(spec: str, is_training: bool, config: PreprocessConfig) -> OpFn:
  """One function dict -> dict applying the ops of `spec` in order."""
  names = validate_spec(spec, config)
  fns = [PREPROCESS_OPS.get(name)(config, is_training) for name in names]

  def preprocess(example: Example) -> Example:
    for fn in fns:
      example = fn(example)
    return example

  return preprocess


# --------------------------------------------------------------------- helpers
def _map_image(fn: Callable[[tf.Tensor], tf.Tensor]) -> OpFn:
  """An op that replaces `image` by fn(image) and keeps the other keys."""
  def op(example: Example) -> Example:
    return {**example, "image": fn(example["image"])}
  return op


def _identity(example: Example) -> Example:
  return example


def _assert(condition, data) -> list:
  """Control dependencies for a runtime check (raises at once when eager)."""
  check = tf.debugging.Assert(condition, data, summarize=8)
  return [] if check is None or tf.executing_eagerly() else [check]


def _single_image(image: tf.Tensor, op: str) -> tf.Tensor:
  if image.shape.rank is not None and image.shape.rank != 3:
    raise ValueError(f"preprocessing op {op!r} needs a single image [H,W,C], "
                     f"got shape {image.shape}")
  return image


def _resize(image: tf.Tensor, hw: Tuple[int, int]) -> tf.Tensor:
  image = tf.image.resize(image, hw, method="bilinear")
  return tf.ensure_shape(image, [hw[0], hw[1], image.shape[-1]])


def _crop_at(image: tf.Tensor, top, left, hw: Tuple[int, int]) -> tf.Tensor:
  image = image[top:top + hw[0], left:left + hw[1], :]
  return tf.ensure_shape(image, [hw[0], hw[1], image.shape[-1]])


def _check_fits(image: tf.Tensor, hw: Tuple[int, int], op: str) -> list:
  shape = tf.shape(image)
  return _assert(tf.logical_and(shape[0] >= hw[0], shape[1] >= hw[1]),
                 [f"preprocessing op {op!r}: image [H,W,C] =", shape,
                  f"is smaller than crop_size {hw}; resize first (e.g. 'resize_small,{op}')"])


def _central_crop(image: tf.Tensor, hw: Tuple[int, int], op: str) -> tf.Tensor:
  with tf.control_dependencies(_check_fits(image, hw, op)):
    shape = tf.shape(image)
    top, left = (shape[0] - hw[0]) // 2, (shape[1] - hw[1]) // 2
    return _crop_at(image, top, left, hw)


def _random_crop(image: tf.Tensor, hw: Tuple[int, int], op: str) -> tf.Tensor:
  with tf.control_dependencies(_check_fits(image, hw, op)):
    shape = tf.shape(image)
    top = tf.random.uniform([], 0, shape[0] - hw[0] + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, shape[1] - hw[1] + 1, dtype=tf.int32)
    return _crop_at(image, top, left, hw)


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
    image = _single_image(image, op)
    if image.shape[-1] != 3:
      raise ValueError(f"preprocessing op {op!r} needs RGB images [H,W,3], got "
                       f"shape {image.shape}")
    return tf.stack([one_copy(image) for _ in range(num)])

  return _map_image(fn)


def _random_seed() -> tf.Tensor:
  """A seed for a stateless op, drawn from a stateful op (follows the global seed)."""
  return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)


# ------------------------------------------------------------------------- ops
@register_op("resize", requires=("resize_size",), geometric=True)
def _resize_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Resizes to `resize_size` (bilinear)."""
  del is_training
  hw = _as_hw(config.resize_size, "resize_size")
  return _map_image(lambda image: _resize(_single_image(image, "resize"), hw))


@register_op("resize_small", requires=("smaller_size",), geometric=True)
def _resize_small_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect ratio."""
  del is_training
  size = config.smaller_size

  def fn(image):
    image = _single_image(image, "resize_small")
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    hw = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    return tf.image.resize(image, hw, method="bilinear")

  return _map_image(fn)


@register_op("crop", requires=("crop_size",), geometric=True)
def _crop_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """A random crop of `crop_size` in training, the central one otherwise."""
  hw = _as_hw(config.crop_size, "crop_size")
  crop = _random_crop if is_training else _central_crop
  return _map_image(lambda image: crop(_single_image(image, "crop"), hw, "crop"))


@register_op("central_crop", requires=("crop_size",), geometric=True)
def _central_crop_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The central crop of `crop_size`."""
  del is_training
  hw = _as_hw(config.crop_size, "crop_size")
  return _map_image(
      lambda image: _central_crop(_single_image(image, "central_crop"), hw, "central_crop"))


def _inception_crop(image: tf.Tensor, hw: Tuple[int, int], is_training: bool,
                    central_fraction: float, min_area: float = 0.08) -> tf.Tensor:
  image = _single_image(image, "inception_crop")
  if is_training:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=_random_seed(), min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_area, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.ensure_shape(tf.slice(image, begin, size), [None, None, image.shape[-1]])
  elif central_fraction < 1.0:
    image = tf.image.central_crop(image, central_fraction)
  return _resize(image, hw)


@register_op("inception_crop", requires=("crop_size",), geometric=True)
def _inception_crop_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Random-resized crop (area `min_crop_area` (8%)-100%, aspect 3/4-4/3) to `crop_size` in
  training; otherwise the central `central_crop_fraction` resized to `crop_size`."""
  hw = _as_hw(config.crop_size, "crop_size")
  fraction, min_area = config.central_crop_fraction, config.min_crop_area
  return _map_image(lambda image: _inception_crop(image, hw, is_training, fraction, min_area))


@register_op("inception_preprocess", requires=("crop_size",), geometric=True)
def _inception_preprocess_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """inception_crop, a random flip in training, and values in [-1, 1]."""
  ops = [_inception_crop_op(config, is_training), _flip_lr_op(config, is_training),
         _to_minus_one_one_op(config, is_training)]

  def fn(example):
    for op in ops:
      example = op(example)
    return example

  return fn


@register_op("flip_lr", geometric=True)
def _flip_lr_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """A random left-right flip in training; identity otherwise."""
  del config
  if not is_training:
    return _identity
  return _map_image(lambda image: tf.image.random_flip_left_right(_single_image(image, "flip_lr")))


def _gray3(image: tf.Tensor) -> tf.Tensor:
  return tf.tile(tf.image.rgb_to_grayscale(image), [1] * (image.shape.rank - 1) + [3])


@register_op("to_gray")
def _to_gray_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """3-channel grayscale with probability `grayscale_probability` in training
  (one draw per example, for all its copies); in eval only if the probability is 1."""
  p = config.grayscale_probability
  if p >= 1.0:
    return _map_image(_gray3)
  if not is_training or p <= 0.0:
    return _identity
  return _map_image(
      lambda image: tf.cond(tf.random.uniform([]) < p, lambda: _gray3(image), lambda: image))


@register_op("-1_to_1")
def _to_minus_one_one_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """[0, 1] -> [-1, 1]."""
  del config, is_training
  return _map_image(lambda image: image * 2.0 - 1.0)


@register_op("0_to_1")
def _clip_zero_one_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Clips values to [0, 1]."""
  del config, is_training
  return _map_image(lambda image: tf.clip_by_value(image, 0.0, 1.0))


@register_op("standardization")
def _standardization_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Zero mean, unit std per image, or per copy/patch of a [P,H,W,C] stack."""
  del config, is_training
  return _map_image(tf.image.per_image_standardization)


@register_op("rotate", geometric=True, stacks=True)
def _rotate_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The four exact rotations (0, 90, 180, 270 degrees counter-clockwise) as [4,H,W,C];
  `label` becomes [0, 1, 2, 3] and the class label moves to `class_label`. Needs H == W."""
  del config, is_training

  def fn(example):
    image = _single_image(example["image"], "rotate")
    h, w = image.shape[0], image.shape[1]
    if h is not None and w is not None and h != w:
      raise ValueError(f"preprocessing op 'rotate' needs a square image, got {h}x{w}; "
                       "crop or resize to a square first")
    shape = tf.shape(image)
    with tf.control_dependencies(_assert(
        tf.equal(shape[0], shape[1]),
        ["preprocessing op 'rotate' needs a square image, got [H,W,C] =", shape,
         "; crop or resize to a square first"])):
      rotations = tf.stack([tf.image.rot90(image, k) for k in range(4)])
    out = {**example, "image": rotations, "label": tf.range(4, dtype=tf.int32)}
    if "label" in example:
      out["class_label"] = example["label"]
    return out

  return fn


# ------------------------------------------------- patches and copies (patch methods, exemplar)
def patch_geometry(height: int, width: int, splits_per_side: int,
                   patch_jitter: int) -> Tuple[int, int, int, int]:
  """(cell_h, cell_w, patch_h, patch_w) of `crop_patches` on a height x width image.

  The grid cells are floor(height / splits_per_side) x floor(width / splits_per_side), from the
  top-left corner (the last height % splits_per_side rows and width % splits_per_side columns
  are dropped); each patch is its cell less `patch_jitter` pixels per side.
  """
  cell_h, cell_w = height // splits_per_side, width // splits_per_side
  patch_h, patch_w = cell_h - patch_jitter, cell_w - patch_jitter
  if patch_h < 1 or patch_w < 1:
    raise ValueError(
        f"crop_patches: a {height}x{width} image in a {splits_per_side}x{splits_per_side} grid "
        f"has {cell_h}x{cell_w} cells, too small for patch_jitter={patch_jitter}; use a larger "
        f"crop_size, fewer splits_per_side or a patch_jitter below {min(cell_h, cell_w)}")
  return cell_h, cell_w, patch_h, patch_w


@register_op("crop_patches", geometric=True, stacks=True)
def _crop_patches_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The image (of static size) as splits_per_side^2 patches [P,h,w,C] in row-major order.

  Cell and patch sizes as `patch_geometry`: h = H // splits_per_side - patch_jitter. In training
  each patch sits at a random offset in [0, patch_jitter] (rows and columns drawn independently,
  per patch) inside its cell; otherwise at offset patch_jitter // 2 (the centre, rounded up-left).
  """
  splits, jitter = config.splits_per_side, config.patch_jitter

  def fn(image):
    image = _single_image(image, "crop_patches")
    height, width = image.shape[0], image.shape[1]
    if height is None or width is None:
      raise ValueError(f"preprocessing op 'crop_patches' needs an image of static size, got "
                       f"shape {image.shape}; put 'crop' or 'resize' before it")
    cell_h, cell_w, patch_h, patch_w = patch_geometry(height, width, splits, jitter)
    num = splits * splits
    if is_training and jitter > 0:
      offsets = tf.random.uniform([num, 2], 0, jitter + 1, dtype=tf.int32)
    else:
      offsets = tf.fill([num, 2], jitter // 2)
    patches = []
    for row in range(splits):
      for col in range(splits):
        k = row * splits + col
        patches.append(_crop_at(image, row * cell_h + offsets[k, 0],
                                col * cell_w + offsets[k, 1], (patch_h, patch_w)))
    return tf.stack(patches)

  return _map_image(fn)


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
  hw = _as_hw(config.crop_size, "crop_size")
  num, p = config.num_of_inception_patches, config.grayscale_probability

  def one_copy(image):
    copy = _inception_crop(image, hw, True, 1.0, config.min_crop_area)
    copy = _color_jitter(tf.image.random_flip_left_right(copy))
    return _with_probability(p, _gray3, copy)

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
  Augmented in evaluation too: the views are the pretext task. The class label is kept.
  """
  del is_training
  hw = _as_hw(config.crop_size, "crop_size")
  strength, p_gray, p_blur = (config.color_jitter_strength, config.grayscale_probability,
                              config.blur_probability)
  kernel_size = blur_kernel_size(hw[0])

  def one_view(image):
    view = tf.image.random_flip_left_right(
        _inception_crop(image, hw, True, 1.0, config.min_crop_area))
    view = _with_probability(COLOR_JITTER_PROBABILITY,
                             lambda x: _strong_color_jitter(x, strength), view)
    view = _with_probability(p_gray, _gray3, view)
    sigma = tf.random.uniform([], *BLUR_SIGMA_RANGE)
    return _with_probability(p_blur, lambda x: gaussian_blur(x, kernel_size, sigma), view)

  return _augmented_copies("simclr_views", NUM_VIEWS, one_view)
