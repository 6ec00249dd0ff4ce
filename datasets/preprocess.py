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
  local_crops: int = 0                    # simclr_views: small views beside the two (multi-crop)
  local_crop_size: Optional[Size] = None  # simclr_views: their size
  local_min_crop_area: float = 0.05       # simclr_views: the share of the image they cover
  local_max_crop_area: float = 0.14
  inpainting_mask: str = "center"         # mask_region: the region hidden (dense_targets.py)
  mask_area: float = 0.25                 # mask_region: the share of the image it hides

  def __post_init__(self):
    for name in ("resize_size", "crop_size", "local_crop_size"):
      value = getattr(self, name)
      if value is not None:
        as_hw(value, name)
    if self.smaller_size is not None and not _is_positive_int(self.smaller_size):
      raise ValueError(f"smaller_size must be a positive int, got {self.smaller_size!r}")
    if not 0.0 <= self.grayscale_probability <= 1.0:
      raise ValueError(
          f"grayscale_probability must be in [0, 1], got {self.grayscale_probability!r}")
    if not 0.0 < self.min_crop_area <= 1.0:
      raise ValueError(f"min_crop_area must be in (0, 1], got {self.min_crop_area!r}")
    if (isinstance(self.local_crops, bool) or not isinstance(self.local_crops, int)
        or self.local_crops < 0):
      raise ValueError(f"local_crops must be an int >= 0, got {self.local_crops!r}")
    if self.local_crops and self.local_crop_size is None:
      raise ValueError(f"local_crops={self.local_crops} needs local_crop_size (the local views' "
                       "size); set --local_crop_size")
    if not 0.0 < self.local_min_crop_area <= self.local_max_crop_area <= 1.0:
      raise ValueError("the local views' areas must satisfy 0 < local_min_crop_area <= "
                       f"local_max_crop_area <= 1, got {self.local_min_crop_area!r} and "
                       f"{self.local_max_crop_area!r}")
    if not 0.0 < self.mask_area <= 1.0:
      raise ValueError(f"mask_area must be in (0, 1], got {self.mask_area!r}")
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


def as_hw(value: Size, name: str) -> Tuple[int, int]:
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
  """One function dict -> dict applying the ops of `spec` in order, to images float32 in [0, 1].

  Where the spec starts with ops that crop (JPEG_PREFIXES), the function also has `from_jpeg`:
  the same on examples whose `image` is a JPEG's bytes, decoding only the region those ops keep
  (tf.io.decode_and_crop_jpeg); `get_data` uses it for JPEG sources."""
  names = validate_spec(spec, config)
  fns = [PREPROCESS_OPS.get(name)(config, is_training) for name in names]

  def apply(example: Example, ops: Sequence[OpFn]) -> Example:
    for fn in ops:
      example = fn(example)
    return example

  def preprocess(example: Example) -> Example:
    return apply(example, fns)

  preprocess.from_jpeg = None
  for count in (2, 1):
    builder = JPEG_PREFIXES.get(tuple(names[:count]))
    prefix = builder(config, is_training) if builder is not None else None
    if prefix is not None:
      preprocess.from_jpeg = lambda example, prefix=prefix, count=count: apply(
          {**example, "image": prefix(example["image"])}, fns[count:])
      break
  return preprocess


# --------------------------------------------------------------------- helpers
# The key of multi-crop's small views [N,h,w,C] (simclr_views with local_crops), beside `image`.
LOCAL_VIEWS = "local_views"


def map_image(fn: Callable[[tf.Tensor], tf.Tensor]) -> OpFn:
  """An op that replaces `image` by fn(image), and the `LOCAL_VIEWS` an op before made by
  fn(them) (only value ops can follow that op: validate_spec), and keeps the other keys."""
  def op(example: Example) -> Example:
    out = {**example, "image": fn(example["image"])}
    if LOCAL_VIEWS in example:
      out[LOCAL_VIEWS] = fn(example[LOCAL_VIEWS])
    return out
  return op


def _identity(example: Example) -> Example:
  return example


def _assert(condition, data) -> list:
  """Control dependencies for a runtime check (raises at once when eager)."""
  check = tf.debugging.Assert(condition, data, summarize=8)
  return [] if check is None or tf.executing_eagerly() else [check]


def single_image(image: tf.Tensor, op: str) -> tf.Tensor:
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


def _check_fits(shape: tf.Tensor, hw: Tuple[int, int], op: str) -> list:
  """That an image of `shape` ([H,W,...]) holds a crop of `hw`."""
  return _assert(tf.logical_and(shape[0] >= hw[0], shape[1] >= hw[1]),
                 [f"preprocessing op {op!r}: image [H,W,C] =", shape,
                  f"is smaller than crop_size {hw}; resize first (e.g. 'resize_small,{op}')"])


def _crop_corner(shape: tf.Tensor, hw: Tuple[int, int], op: str, random: bool):
  """(top, left) of a crop of `hw` from an image of `shape`: random, or the central one."""
  with tf.control_dependencies(_check_fits(shape, hw, op)):
    if not random:
      return (shape[0] - hw[0]) // 2, (shape[1] - hw[1]) // 2
    top = tf.random.uniform([], 0, shape[0] - hw[0] + 1, dtype=tf.int32)
    left = tf.random.uniform([], 0, shape[1] - hw[1] + 1, dtype=tf.int32)
    return top, left


def _central_crop(image: tf.Tensor, hw: Tuple[int, int], op: str) -> tf.Tensor:
  return _crop_at(image, *_crop_corner(tf.shape(image), hw, op, random=False), hw)


def _random_crop(image: tf.Tensor, hw: Tuple[int, int], op: str) -> tf.Tensor:
  return _crop_at(image, *_crop_corner(tf.shape(image), hw, op, random=True), hw)


def _random_seed() -> tf.Tensor:
  """A seed for a stateless op, drawn from a stateful op (follows the global seed)."""
  return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)


# ------------------------------------------------------------------------- ops
@register_op("resize", requires=("resize_size",), geometric=True)
def _resize_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Resizes to `resize_size` (bilinear)."""
  del is_training
  hw = as_hw(config.resize_size, "resize_size")
  return map_image(lambda image: _resize(single_image(image, "resize"), hw))


@register_op("resize_small", requires=("smaller_size",), geometric=True)
def _resize_small_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Resizes so that the shorter side is `smaller_size`, keeping the aspect ratio."""
  del is_training
  size = config.smaller_size

  def fn(image):
    image = single_image(image, "resize_small")
    return tf.image.resize(image, _smaller_side_to(tf.shape(image)[:2], size), method="bilinear")

  return map_image(fn)


def _smaller_side_to(shape: tf.Tensor, size: int) -> tf.Tensor:
  """[H, W] int32 of an image of `shape` ([H, W]) resized so that its shorter side is `size`."""
  shape = tf.cast(shape, tf.float32)
  scale = size / tf.reduce_min(shape)
  return tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)


@register_op("crop", requires=("crop_size",), geometric=True)
def _crop_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """A random crop of `crop_size` in training, the central one otherwise."""
  hw = as_hw(config.crop_size, "crop_size")
  crop = _random_crop if is_training else _central_crop
  return map_image(lambda image: crop(single_image(image, "crop"), hw, "crop"))


@register_op("central_crop", requires=("crop_size",), geometric=True)
def _central_crop_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The central crop of `crop_size`."""
  del is_training
  hw = as_hw(config.crop_size, "crop_size")
  return map_image(
      lambda image: _central_crop(single_image(image, "central_crop"), hw, "central_crop"))


def _inception_window(shape: tf.Tensor, is_training: bool, central_fraction: float,
                      min_area: float, max_area: float = 1.0):
  """(top-left [2], size [2]) of inception_crop's region of an image of `shape` ([H, W, C]):
  in training a random box (area min_area-max_area, aspect 3/4-4/3), else the central
  `central_fraction` of each side (tf.image.central_crop's rounding)."""
  if is_training:
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
        seed=_random_seed(), min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(min_area, max_area), max_attempts=10, use_image_if_no_bounding_boxes=True)
    return begin[:2], size[:2]
  sides = tf.cast(shape[:2], tf.float64)
  start = tf.cast((sides - sides * central_fraction) / 2, tf.int32)
  return start, shape[:2] - 2 * start


def inception_crop(image: tf.Tensor, hw: Tuple[int, int], is_training: bool,
                    central_fraction: float, min_area: float = 0.08, max_area: float = 1.0
                    ) -> tf.Tensor:
  image = single_image(image, "inception_crop")
  if is_training or central_fraction < 1.0:
    begin, size = _inception_window(tf.shape(image), is_training, central_fraction, min_area,
                                    max_area)
    channels = image.shape[-1]
    image = tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size, [-1]], 0))
    image = tf.ensure_shape(image, [None, None, channels])
  return _resize(image, hw)


@register_op("inception_crop", requires=("crop_size",), geometric=True)
def _inception_crop_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Random-resized crop (area `min_crop_area` (8%)-100%, aspect 3/4-4/3) to `crop_size` in
  training; otherwise the central `central_crop_fraction` resized to `crop_size`."""
  hw = as_hw(config.crop_size, "crop_size")
  fraction, min_area = config.central_crop_fraction, config.min_crop_area
  return map_image(lambda image: inception_crop(image, hw, is_training, fraction, min_area))


def _after_inception_crop(config: PreprocessConfig, is_training: bool) -> list:
  """What inception_preprocess does after its crop: a random flip in training, values in
  [-1, 1] (also on the JPEG path, JPEG_PREFIXES)."""
  return [_flip_lr_op(config, is_training), _to_minus_one_one_op(config, is_training)]


@register_op("inception_preprocess", requires=("crop_size",), geometric=True)
def _inception_preprocess_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """inception_crop, a random flip in training, and values in [-1, 1]."""
  ops = [_inception_crop_op(config, is_training)] + _after_inception_crop(config, is_training)

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
  return map_image(lambda image: tf.image.random_flip_left_right(single_image(image, "flip_lr")))


def gray3(image: tf.Tensor) -> tf.Tensor:
  return tf.tile(tf.image.rgb_to_grayscale(image), [1] * (image.shape.rank - 1) + [3])


@register_op("to_gray")
def _to_gray_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """3-channel grayscale with probability `grayscale_probability` in training
  (one draw per example, for all its copies); in eval only if the probability is 1."""
  p = config.grayscale_probability
  if p >= 1.0:
    return map_image(gray3)
  if not is_training or p <= 0.0:
    return _identity
  return map_image(
      lambda image: tf.cond(tf.random.uniform([]) < p, lambda: gray3(image), lambda: image))


@register_op("-1_to_1")
def _to_minus_one_one_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """[0, 1] -> [-1, 1]."""
  del config, is_training
  return map_image(lambda image: image * 2.0 - 1.0)


@register_op("0_to_1")
def _clip_zero_one_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Clips values to [0, 1]."""
  del config, is_training
  return map_image(lambda image: tf.clip_by_value(image, 0.0, 1.0))


@register_op("standardization")
def _standardization_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """Zero mean, unit std per image, or per copy/patch of a [P,H,W,C] stack."""
  del config, is_training
  return map_image(tf.image.per_image_standardization)


@register_op("rotate", geometric=True, stacks=True)
def _rotate_op(config: PreprocessConfig, is_training: bool) -> OpFn:
  """The four exact rotations (0, 90, 180, 270 degrees counter-clockwise) as [4,H,W,C];
  `label` becomes [0, 1, 2, 3] and the class label moves to `class_label`. Needs H == W."""
  del config, is_training

  def fn(example):
    image = single_image(example["image"], "rotate")
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
    image = single_image(image, "crop_patches")
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

  return map_image(fn)


# ------------------------------------------------ decoding only the region that the crop keeps
def _decode_window(jpeg: tf.Tensor, top_left: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """The region [top_left, top_left + size) of a JPEG as float32 RGB in [0, 1], decoding only
  the blocks it covers. Equal to decoding the whole image and slicing it, but at the region's
  first or last column, where the colour (subsampled) comes from fewer neighbours: a few units
  of 255 apart there (measured)."""
  window = tf.concat([tf.cast(top_left, tf.int32), tf.cast(size, tf.int32)], 0)
  image = tf.ensure_shape(tf.io.decode_and_crop_jpeg(jpeg, window, channels=3), [None, None, 3])
  return tf.image.convert_image_dtype(image, tf.float32)


def _jpeg_inception_crop(config: PreprocessConfig, is_training: bool):
  hw = as_hw(config.crop_size, "crop_size")

  def fn(jpeg):
    begin, size = _inception_window(tf.io.extract_jpeg_shape(jpeg), is_training,
                                    config.central_crop_fraction, config.min_crop_area)
    return _resize(_decode_window(jpeg, begin, size), hw)

  return fn


def _jpeg_inception_preprocess(config: PreprocessConfig, is_training: bool):
  crop = _jpeg_inception_crop(config, is_training)
  rest = _after_inception_crop(config, is_training)

  def fn(jpeg):
    example = {"image": crop(jpeg)}
    for op in rest:
      example = op(example)
    return example["image"]

  return fn


def _jpeg_crop(op: str, random: bool):
  def builder(config: PreprocessConfig, is_training: bool):
    hw = as_hw(config.crop_size, "crop_size")

    def fn(jpeg):
      shape = tf.io.extract_jpeg_shape(jpeg)
      corner = tf.stack(_crop_corner(shape, hw, op, random and is_training))
      return tf.ensure_shape(_decode_window(jpeg, corner, hw), [hw[0], hw[1], 3])

    return fn
  return builder


def _jpeg_resize_small_central_crop(config: PreprocessConfig, is_training: bool):
  """resize_small then central_crop from the JPEG's region under the crop: that region (its
  corners rounded to whole source pixels) decoded alone and resized to `crop_size`, as
  TensorFlow's ImageNet pipelines crop before resizing. Each output pixel then samples the
  source within one source pixel of where resizing the whole image would (half a pixel at the
  crop's first row and column); the exact resampling costs more than the decoding it saves
  (measured: 4.9 ms an image against 2.1 for the whole image)."""
  del is_training
  hw = as_hw(config.crop_size, "crop_size")

  def fn(jpeg):
    shape = tf.io.extract_jpeg_shape(jpeg)[:2]
    resized = _smaller_side_to(shape, config.smaller_size)
    corner = tf.stack(_crop_corner(resized, hw, "central_crop", random=False))
    ratio = tf.cast(shape, tf.float32) / tf.cast(resized, tf.float32)
    start = tf.cast(tf.round(tf.cast(corner, tf.float32) * ratio), tf.int32)
    size = tf.cast(tf.round(tf.constant(hw, tf.float32) * ratio), tf.int32)
    size = tf.maximum(tf.minimum(size, shape - start), 1)
    return _resize(_decode_window(jpeg, start, size), hw)

  return fn


# Leading ops of a spec -> builder (config, is_training) -> fn(JPEG bytes) -> the image those
# ops make (float32; None: not for these settings), reading the JPEG's needed region only.
JPEG_PREFIXES = {
    ("inception_crop",): _jpeg_inception_crop,
    ("inception_preprocess",): _jpeg_inception_preprocess,
    ("crop",): _jpeg_crop("crop", random=True),
    ("central_crop",): _jpeg_crop("central_crop", random=False),
    ("resize_small", "central_crop"): _jpeg_resize_small_central_crop,
}
