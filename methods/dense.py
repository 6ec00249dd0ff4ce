"""Dense outputs for any backbone: a decoder from the backbone's feature maps to a map of the
image (colorization's colour bins, inpainting's pixels), and the pretext model around the two.

The decoder (`DenseDecoder`) starts at one end point's map (--decoder_end_points' first; by
default the architecture's deepest map, core/architectures `dense_end_point`: ResNet's and
RevNet's block4, VGG's block5, a ViT's final_norm with its patch tokens on their grid) and goes up
in stages, each a 2x bilinear upsampling, a 3x3 convolution, batch norm and ReLU, until it
reaches the output's size, the input's divided by --dense_output_stride (a last bilinear resize
where the sizes are not a power of 2 apart); a stage at the start's size, without upsampling,
where it is already there. A 1x1 convolution with bias then gives the output's channels. The
first stage has --decoder_width channels, each later one half of the one before, at least 32.
A start map smaller than 4x4 (block4 of a ResNet on 32x32 images is 1x1) is first projected by
a fully connected layer, batch norm and ReLU to a 4x4 map of --decoder_width channels: bilinear
upsampling of a 1x1 map is the same at every pixel, so without it the output could hardly vary
over the image (the context encoder's channel-wise fully connected layer, and the projection
that starts an image generator, do this part).

By default the decoder reads the one map, as the papers' decoders do (the colorization network
and the context encoder have no skip connections): what reaches the output passes through the
whole backbone. Further --decoder_end_points are joined in, U-Net-like, by concatenation before
the convolution of the stage whose output has their size; they give the decoder the shallow
layers' detail, and with it a way round the deep ones.

The decoder is part of the pretext model only: the export's probed end points are the
backbone's (`DenseModel.probed_end_points`), its serving `logits` the dense output.
"""

import dataclasses
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

from core import architectures
from core.errors import ConfigError
from methods import base
import models
from models import common

MIN_WIDTH = 32  # The narrowest stage.
PROJECTED_SIDE = 4  # A smaller start map is projected to this side first.


def spatial_map(end_point: tf.Tensor, grid: Optional[Tuple[int, int]]) -> tf.Tensor:
  """An end point as a map [B,h,w,C]: a convolutional one as it is, a ViT's tokens [B,1+N,D]
  without the class token, on their patch `grid` (h, w)."""
  if end_point.shape.rank == 4:
    return end_point
  if end_point.shape.rank == 3 and grid is not None:
    return tf.reshape(end_point[:, 1:], [-1, grid[0], grid[1], end_point.shape[-1]])
  raise ValueError(f"an end point of shape {end_point.shape} is not a map of the image")


def patch_grid(backbone, height: int, width: int) -> Optional[Tuple[int, int]]:
  """The (h, w) grid of a ViT's patch tokens on images of that size; None for a backbone of
  maps."""
  return backbone.patch_grid(height, width) if hasattr(backbone, "patch_grid") else None


def projected_size(start: Tuple[int, int], output: Tuple[int, int]) -> Optional[Tuple[int, int]]:
  """The map a start smaller than PROJECTED_SIDE on a side (and than the output) is projected
  to; None where it is not."""
  size = (min(PROJECTED_SIDE, output[0]), min(PROJECTED_SIDE, output[1]))
  return size if start[0] < size[0] or start[1] < size[1] else None


class DenseDecoder(keras.layers.Layer):
  """The decoder of the module docstring from a start map of `start_size`: `stage_sizes` (h, w)
  after each stage (the first equal to the start's, or its projection's, where it does not
  upsample), `skip_stages`: for each map joined in after the first, the stage it joins, and
  `output_size`."""

  def __init__(self, start_size: Tuple[int, int], stage_sizes: Sequence[Tuple[int, int]],
               skip_stages: Sequence[int], output_size: Tuple[int, int], width: int,
               channels: int, sync_bn: bool, name: str = "decoder"):
    super().__init__(name=name)
    self.output_size = tuple(output_size)
    self.projected = projected_size(tuple(start_size), self.output_size)
    self.start_size = self.projected or tuple(start_size)
    self.stage_sizes = [tuple(s) for s in stage_sizes]
    self.skip_stages = list(skip_stages)
    self.widths = [max(MIN_WIDTH, width >> i) for i in range(len(self.stage_sizes))]
    if self.projected:
      self.projection = keras.layers.Dense(
          self.projected[0] * self.projected[1] * self.widths[0], use_bias=False,
          name="projection")
      self.projection_bn = common.batch_norm("projection_bn", 0.9, sync_bn)
    for i, w in enumerate(self.widths, 1):
      setattr(self, f"conv{i}", common.conv(w, 3, name=f"conv{i}"))
      setattr(self, f"bn{i}", common.batch_norm(f"bn{i}", 0.9, sync_bn))
    self.output_conv = keras.layers.Conv2D(channels, 1, name="output")

  def _upsamples(self, i: int) -> bool:
    before = self.start_size if i == 0 else self.stage_sizes[i - 1]
    return self.stage_sizes[i] != before

  def build(self, input_shape):
    """`input_shape`: the shapes of the maps it reads, the start's first."""
    shapes = [tuple(s) for s in input_shape]
    channels = shapes[0][-1]
    if self.projected:
      flat = (None, shapes[0][1] * shapes[0][2] * channels)
      common.build_sequence(flat, self.projection)
      self.projection_bn.build((None, *self.projected, self.widths[0]))
      channels = self.widths[0]
    for i in range(len(self.stage_sizes)):
      channels += sum(s[-1] for s, stage in zip(shapes[1:], self.skip_stages) if stage == i)
      shape = (None, *self.stage_sizes[i], channels)
      common.build_sequence(shape, getattr(self, f"conv{i + 1}"), getattr(self, f"bn{i + 1}"))
      channels = self.widths[i]
    self.output_conv.build((None, *self.output_size, channels))

  def call(self, maps, training=None):
    x = maps[0]
    if self.projected:
      x = self.projection(tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]]))
      x = tf.reshape(x, [-1, *self.projected, self.widths[0]])
      x = keras.ops.relu(self.projection_bn(x, training=training))
    for i in range(len(self.stage_sizes)):
      if self._upsamples(i):
        x = tf.image.resize(x, self.stage_sizes[i], method="bilinear")
      joined = [m for m, stage in zip(maps[1:], self.skip_stages) if stage == i]
      if joined:
        x = tf.concat([x] + [tf.cast(m, x.dtype) for m in joined], axis=-1)
      x = getattr(self, f"conv{i + 1}")(x)
      x = keras.ops.relu(getattr(self, f"bn{i + 1}")(x, training=training))
    if tuple(x.shape[1:3]) != self.output_size:
      x = tf.image.resize(x, self.output_size, method="bilinear")
    return self.output_conv(x)


class DenseModel(keras.Model):
  """A backbone and a DenseDecoder on the maps of its `end_points` (the start first); `probed`:
  the backbone's end points, in depth order.
  `model(images)` returns the backbone's end points and `logits`, the dense output
  [B, h, w, channels]."""

  def __init__(self, backbone: keras.Model, decoder: DenseDecoder, end_points: Sequence[str],
               probed: Sequence[str], name: str):
    super().__init__(name=name)
    self.backbone = backbone
    self.decoder = decoder
    self.decoder_end_points = list(end_points)
    self._probed = list(probed)

  def build(self, input_shape):
    del input_shape  # Built by build_dense_model.

  @property
  def probed_end_points(self):
    """The end points an export's probes see: the backbone's, not the dense output."""
    return list(self._probed)

  def maps(self, end_points, images):
    grid = patch_grid(self.backbone, images.shape[1], images.shape[2])
    return [spatial_map(end_points[name], grid) for name in self.decoder_end_points]

  def call(self, images, training=None):
    end_points = dict(self.backbone(images, training=training))
    end_points["logits"] = self.decoder(self.maps(end_points, images), training=training)
    return end_points


def output_size(config, image_shape) -> Tuple[int, int]:
  """The dense output's (h, w): the input's divided by --dense_output_stride."""
  return image_shape[0] // config.dense_output_stride, image_shape[1] // config.dense_output_stride


def decoder_end_points(config) -> list:
  """--decoder_end_points, or the architecture's deepest map."""
  return list(config.decoder_end_points) or [
      architectures.facts(config.architecture).dense_end_point]


def build_dense_model(config, image_shape, channels: int, cls=DenseModel,
                      **model_kwargs) -> DenseModel:
  """A `cls` (a DenseModel, given `model_kwargs`) of the config's backbone without a head and a
  DenseDecoder to `channels` at output_size, for single images `image_shape` [H,W,C]; a
  ConfigError for end points that are not maps, or not on the decoder's way up."""
  base.require_single_images(image_shape, config.task)
  stride = config.dense_output_stride
  if image_shape[0] % stride or image_shape[1] % stride:
    raise ConfigError(f"--dense_output_stride={stride} does not divide the "
                      f"{image_shape[0]}x{image_shape[1]} input")
  kwargs = base.backbone_kwargs(config)
  backbone = models.get_model(config.architecture, num_classes=None, **kwargs)
  names = decoder_end_points(config)
  images = tf.zeros([1, *image_shape])
  end_points = backbone(images, training=False)
  unknown = [n for n in names if n not in end_points]
  if unknown:
    raise ConfigError(f"--decoder_end_points: {', '.join(unknown)} not end points of "
                      f"{config.architecture}; valid choices: {', '.join(end_points)}")
  grid = patch_grid(backbone, *image_shape[:2])
  sizes = {}
  for name in names:
    try:
      sizes[name] = tuple(spatial_map(end_points[name], grid).shape[1:3])
    except ValueError:
      raise ConfigError(f"--decoder_end_points: {name} of {config.architecture} is a vector "
                        f"{list(end_points[name].shape[1:])}, not a map of the image") from None
  target = output_size(config, image_shape)
  projected = projected_size(sizes[names[0]], target)
  size = projected or sizes[names[0]]
  stages = [size] if projected else []  # A stage at the projection's size, where skips join.
  while size[0] < target[0] or size[1] < target[1]:
    size = (size[0] * 2, size[1] * 2)
    stages.append(size)
  stages = stages or [size]
  skips = []
  for name in names[1:]:
    if sizes[name] not in stages:
      raise ConfigError(f"--decoder_end_points: {name}'s {sizes[name][0]}x{sizes[name][1]} map "
                        f"is not on the decoder's way from {names[0]} to the output (sizes "
                        f"{', '.join(f'{h}x{w}' for h, w in stages)})")
    skips.append(stages.index(sizes[name]))
  decoder = DenseDecoder(sizes[names[0]], stages, skips, target, config.decoder_width, channels,
                         sync_bn=kwargs["sync_bn"])
  model = cls(backbone, decoder, names, list(end_points), name=config.task, **model_kwargs)
  model(images, training=False)
  return model


def check_input_shape(config, image_shape) -> None:
  """The ConfigErrors of build_dense_model for images of `image_shape`, before any work: the
  same decoder built on the narrowest backbone (the sizes of the maps do not depend on the
  width)."""
  narrow = dataclasses.replace(config, filters_factor=1, decoder_width=MIN_WIDTH)
  build_dense_model(narrow, tuple(image_shape), 1)


def resize_target(target: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """A per-pixel target [B,H,W,C] at the dense output's `size`: as it is, or area-averaged."""
  target = tf.cast(target, tf.float32)
  if tuple(target.shape[1:3]) == tuple(size):
    return target
  return tf.image.resize(target, size, method="area")

