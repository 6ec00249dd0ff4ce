"""Relative patch location (Doersch et al. 2015): where is a patch relative to the centre one?

Each image comes as P = splits_per_side^2 patches [B,P,h,w,C] in row-major order
(`crop_patches`, splits_per_side odd). The backbone embeds every patch; each of the 8 neighbours
of the centre patch is paired with it (the concatenation [centre embedding, neighbour
embedding]), and the head (methods/patch_utils.py) classifies the neighbour's position, 8-way.
Every neighbour of every image is used: 8 pairs per image.

Labels: the neighbour's (row, column) offset from the centre, in row-major order
(NEIGHBOUR_OFFSETS):  0 1 2
                      3 . 4
                      5 6 7
"""

import numpy as np
import tensorflow as tf

from core.errors import ConfigError
from methods import base
from methods import patch_utils

NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
NUM_CLASSES = len(NEIGHBOUR_OFFSETS)


def patch_indices(splits_per_side: int):
  """(centre patch index, [8] neighbour patch indices in label order) of the row-major grid."""
  if splits_per_side < 3 or splits_per_side % 2 == 0:
    raise ValueError(f"relative patch location needs an odd splits_per_side >= 3 (a centre "
                     f"patch with 8 neighbours), got {splits_per_side}")
  mid = splits_per_side // 2
  centre = mid * splits_per_side + mid
  return centre, np.array([(mid + dr) * splits_per_side + mid + dc
                           for dr, dc in NEIGHBOUR_OFFSETS], np.int32)


def centre_neighbour_pairs(x: tf.Tensor, splits_per_side: int):
  """x [B,P,...] -> (centre [B,8,...], neighbours [B,8,...], labels [B,8]): pair j of an image is
  its centre patch and the neighbour of label j."""
  centre, neighbours = patch_indices(splits_per_side)
  neighbour_x = tf.gather(x, neighbours, axis=1)
  centre_x = tf.gather(x, np.full([NUM_CLASSES], centre, np.int32), axis=1)
  labels = tf.tile(tf.range(NUM_CLASSES)[None], [tf.shape(x)[0], 1])
  return centre_x, neighbour_x, labels


def validate(config) -> None:
  patch_utils.validate_patch_config(config)
  try:
    patch_indices(config.splits_per_side)
  except ValueError as e:
    raise ConfigError(f"--splits_per_side={config.splits_per_side}: {e}") from None


def build_model(config, image_shape, num_classes):
  del num_classes  # The classes are the 8 neighbour positions.
  return patch_utils.build_patch_model(config, image_shape, "relative_patch_location",
                                       group_size=2, num_classes=NUM_CLASSES)


serving_input_shape = base.stacked_serving_input_shape


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  training = mode == base.TRAIN
  end_points, embeddings = patch_utils.embed_patches(model, batch["image"], training)
  centre, neighbours, labels = centre_neighbour_pairs(embeddings, config.splits_per_side)
  pairs = tf.concat([centre, neighbours], axis=-1)  # [B,8,2D]
  logits = model.head(tf.reshape(pairs, [-1, 2 * model.embed_dim]), training=training)
  return base.classification_spec(logits, tf.reshape(labels, [-1]), mode, end_points)
