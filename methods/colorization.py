"""Colorization (Zhang, Isola, Efros 2016): from an image's lightness, predict its colours as a
distribution over quantised colours, per pixel.

The input is the lightness L of CIE Lab, L / 100 in each of the 3 channels the backbone takes
(the 'lightness' op, then '-1_to_1'); its target, the image's a and b ('ab_target', before
'lightness'). The export's representation is the backbone on that lightness input, and so is its
random-init baseline's (the evaluation spec keeps 'lightness'): a backbone built for RGB, its
first convolution unchanged, rather than one of a single channel, so that every architecture,
width and evaluation takes it as it takes any export.

A dense decoder (methods/dense.py) maps the backbone to scores over Q colour bins at the input's
size divided by --dense_output_stride (the paper: 4). The bins are the cells of a grid of 10 ab
units (centres at multiples of 10) that some 8-bit sRGB colour falls in (`bin_centres`: 261,
found from the colours on the faces of the RGB cube, whose ab values are all the gamut's; the
paper keeps the 313 in-gamut bins of its grid of 10, counted its own way). Each target pixel
(its ab averaged over the output pixel's area) belongs to the bin of its cell, or, outside them,
to the bin nearest to its cell's centre (`quantise`; the paper's soft encoding over the 5
nearest bins is replaced by this hard one). The loss is the per-pixel cross-entropy, weighted by
its bin's rarity (class rebalancing): with p the bins' frequencies smoothed by a Gaussian of 5
ab units, w = ((1 - lambda) p + lambda / Q)^-1, scaled so that sum_q p_q w_q = 1 (lambda:
--color_rebalance, the paper's 0.5; 1 gives every pixel the weight 1). The paper takes p from
the whole of ImageNet before training; here it is a moving average (momentum 0.99, corrected for
its start as Adam's moments are) of the bins' frequencies in the global batches trained on so far,
which `after_step` updates: the first step weighs every bin alike, the second by the first
batch's frequencies. An
image's loss is the mean over its pixels of the weighted cross-entropy.

Metrics: `loss`, per image; `accuracy`, the share of an image's pixels whose most probable bin is
their target's (the pretext metric); `loss_unweighted`, the cross-entropy without the weights.
"""

import functools

import numpy as np
import tensorflow as tf

from core import specs
from core.errors import ConfigError
from datasets.dense_targets import TARGET, rgb_to_lab
from methods import base
from methods import dense

BIN_SPACING = 10.0  # ab units between bin centres.
GRID_RADIUS = 11    # Centres from -110 to 110 on each axis: a 23 x 23 grid of cells.
SMOOTHING_SIGMA = 5.0  # ab units: the Gaussian that smooths the bins' frequencies.
PRIOR_MOMENTUM = 0.99

serving_input_shape = base.single_serving_input_shape
check_input_shape = dense.check_input_shape


def grid_cell(ab: tf.Tensor) -> tf.Tensor:
  """The index (row-major on the 23 x 23 grid: a, then b) of the grid cell of each ab [..., 2]
  (the nearest centre; values beyond the grid in its edge cells)."""
  index = tf.clip_by_value(tf.cast(tf.round(ab / BIN_SPACING), tf.int32), -GRID_RADIUS,
                           GRID_RADIUS) + GRID_RADIUS
  return index[..., 0] * (2 * GRID_RADIUS + 1) + index[..., 1]


@functools.lru_cache(maxsize=None)
def _bins():
  """(the ab centres [Q, 2] of the cells some 8-bit sRGB colour falls in, in cell order; the
  bin [23 * 23] of each cell: its own, or the bin of the nearest centre)."""
  levels = np.arange(256, dtype=np.float32) / 255.0
  u, v = (x.ravel() for x in np.meshgrid(levels, levels, indexing="ij"))
  faces = []
  for axis in range(3):
    for value in (0.0, 1.0):
      columns = [u, v]
      columns.insert(axis, np.full_like(u, value))
      faces.append(np.stack(columns, axis=-1))
  with tf.init_scope():  # Eager, where the first call is in a traced function.
    cells = np.unique(grid_cell(rgb_to_lab(np.concatenate(faces))[:, 1:]).numpy())
  side = 2 * GRID_RADIUS + 1
  grid = (np.stack(np.divmod(np.arange(side * side), side), -1) - GRID_RADIUS) * BIN_SPACING
  centres = grid[cells].astype(np.float32)
  nearest = np.argmin(((grid[:, None] - centres[None]) ** 2).sum(-1), axis=1)
  return centres, nearest.astype(np.int32)


def bin_centres() -> np.ndarray:
  """The ab centres [Q, 2] of the colour bins (module docstring)."""
  return _bins()[0]


def num_bins() -> int:
  return len(bin_centres())


def quantise(ab: tf.Tensor) -> tf.Tensor:
  """The colour bin (int32, in [0, Q)) of each ab [..., 2]."""
  return tf.gather(tf.constant(_bins()[1]), grid_cell(tf.cast(ab, tf.float32)))


def rebalance_weights(frequencies: tf.Tensor, rebalance: float) -> tf.Tensor:
  """The weight [Q] of each bin: frequencies [Q] smoothed by a Gaussian of SMOOTHING_SIGMA over
  the bins' centres, w = ((1 - rebalance) p + rebalance / Q)^-1, sum p w = 1."""
  centres = tf.constant(bin_centres())
  distance = tf.reduce_sum(tf.square(centres[:, None] - centres[None]), axis=-1)
  p = tf.linalg.matvec(tf.exp(-distance / (2.0 * SMOOTHING_SIGMA ** 2)),
                       tf.cast(frequencies, tf.float32))
  p /= tf.reduce_sum(p)
  w = 1.0 / ((1.0 - rebalance) * p + rebalance / tf.cast(tf.shape(p)[0], tf.float32))
  return w / tf.reduce_sum(p * w)


def colorization_loss(logits: tf.Tensor, bins: tf.Tensor, weights: tf.Tensor):
  """(per-image weighted loss [B], per-image accuracy [B], per-image unweighted loss [B]) of the
  scores `logits` [B,h,w,Q] of target `bins` [B,h,w] under bin `weights` [Q]."""
  logits = tf.cast(logits, tf.float32)
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=bins, logits=logits)
  weighted = cross_entropy * tf.gather(weights, bins)
  hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), bins), tf.float32)
  return (tf.reduce_mean(weighted, axis=[1, 2]), tf.reduce_mean(hits, axis=[1, 2]),
          tf.reduce_mean(cross_entropy, axis=[1, 2]))


def bin_counts(bins: tf.Tensor) -> tf.Tensor:
  """How many pixels of each image of `bins` [B,h,w] are in each bin: [B, Q]."""
  images = tf.shape(bins)[0]
  segments = tf.range(images)[:, None, None] * num_bins() + bins
  counts = tf.math.unsorted_segment_sum(tf.ones_like(bins, tf.float32), segments,
                                        images * num_bins())
  return tf.reshape(counts, [images, num_bins()])


class ColorizationModel(dense.DenseModel):
  """A DenseModel to the colour bins' scores, and the moving average of the bins' frequencies:
  `frequency_sum` [Q] and `frequency_weight` (its total weight, for the start's correction)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.frequency_sum = self.add_weight(shape=(num_bins(),), initializer="zeros",
                                         trainable=False, name="frequency_sum")
    self.frequency_weight = self.add_weight(shape=(), initializer="zeros", trainable=False,
                                            name="frequency_weight")

  def frequencies(self) -> tf.Tensor:
    """The bins' frequencies so far (uniform before the first step)."""
    uniform = tf.fill([num_bins()], 1.0 / num_bins())
    weight = tf.convert_to_tensor(self.frequency_weight)
    return tf.where(weight > 0.0, tf.convert_to_tensor(self.frequency_sum) /
                    tf.maximum(weight, 1e-12), uniform)


def validate(config) -> None:
  names = specs.parse_spec(config.preprocessing)
  base.require_op(config, "ab_target", "resize,flip_lr,ab_target,lightness,-1_to_1")
  base.require_op(config, "lightness", "resize,flip_lr,ab_target,lightness,-1_to_1")
  first = names.index("ab_target")
  before = [n for n in names[:first] if n in ("lightness", "to_gray", "standardization")
            + specs.MINUS_ONE_TO_ONE_OPS]
  if before or names.index("lightness") < first:
    raise ConfigError(f"--preprocessing={config.preprocessing!r}: 'ab_target' takes the colours "
                      f"of RGB values in [0, 1], so it comes before 'lightness' and before "
                      f"{', '.join(before) or 'value ops'} (e.g. "
                      f"'resize,flip_lr,ab_target,lightness,-1_to_1')")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  return dense.build_dense_model(config, image_shape, num_bins(), cls=ColorizationModel)


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  end_points = model(batch["image"], training=mode == base.TRAIN)
  logits = tf.cast(end_points["logits"], tf.float32)
  predictions = {"logits": logits}
  if mode == base.PREDICT:
    return base.predict_spec(predictions, end_points)
  bins = quantise(dense.resize_target(batch[TARGET], logits.shape[1:3]))
  weights = tf.stop_gradient(rebalance_weights(model.frequencies(), config.color_rebalance))
  loss, accuracy, unweighted = colorization_loss(logits, bins, weights)
  counts = bin_counts(bins)
  return base.ModelSpec(loss=tf.reduce_mean(loss),
                        metrics={"loss": loss, "accuracy": accuracy,
                                 "loss_unweighted": unweighted},
                        predictions=predictions, end_points=end_points,
                        updates={"bin_counts": counts} if mode == base.TRAIN else {})


def after_step(model, updates, progress, config) -> None:
  """The moving average of the bins' frequencies takes the global batch's."""
  del progress, config
  counts = tf.reduce_sum(updates["bin_counts"], axis=0)
  model.frequency_sum.assign(PRIOR_MOMENTUM * model.frequency_sum +
                             (1.0 - PRIOR_MOMENTUM) * counts / tf.reduce_sum(counts))
  model.frequency_weight.assign(PRIOR_MOMENTUM * model.frequency_weight + (1.0 - PRIOR_MOMENTUM))
