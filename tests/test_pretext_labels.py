"""Each method's pretext labels, checked against what was really done to its input.

A stand-in backbone reads a known fact off each input (the grid cell a patch was cut from, the
image it came from, the corner a marker was rotated to), and a stand-in head turns the rows it
is given back into the class they really are (the permutation the patches are in, the
neighbour's position, the rotation). Run through the real preprocessing op, batching and the
method's model_fn, every row's label must then be predicted: accuracy exactly 1, which a label
made in any other order or for any other arrangement fails. (A loss that drops on a fixed batch
shows no such thing: any labelling of a fixed batch can be memorised.)
"""

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from datasets import PreprocessConfig, get_preprocess_fn
from methods import base
from methods import exemplar
from methods import jigsaw
from methods import relative_patch_location as rpl
from methods import rotation

SPLITS, CELL = 3, 10  # A 3x3 grid of 10x10 cells: 30x30 images.


def _batch(spec, images, is_training, **params):
  """One batch of `images` through the preprocessing op `spec`, in graph mode as get_data."""
  fn = get_preprocess_fn(spec, is_training, PreprocessConfig(**params))
  labels = np.zeros(len(images), np.int32)
  ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels}).map(fn)
  return next(iter(ds.batch(len(images))))


def _grid_images(num):
  """[num,30,30,3]: channel 0 = the index of the grid cell (row-major), channel 1 = the image's
  index, channel 2 = 0."""
  cells = np.repeat(np.repeat(np.arange(SPLITS * SPLITS).reshape(SPLITS, SPLITS), CELL, 0),
                    CELL, 1)
  out = np.zeros([num, SPLITS * CELL, SPLITS * CELL, 3], np.float32)
  out[..., 0] = cells
  out[..., 1] = np.arange(num)[:, None, None]
  return out


class PatchReader:
  """A patch method's model: the 'embedding' of a patch is (its cell, its image); the head is
  `head`, given the rows [M, group * 2] the method builds."""

  embed_dim = 2

  def __init__(self, head):
    self.head = lambda x, training=None: head(np.asarray(x).reshape(len(x), -1, 2))

  def __call__(self, patches, training=None):
    means = tf.reduce_mean(patches[..., :2], axis=[1, 2])  # Patches lie inside their cells.
    return {"logits": means}


def _one_hot(classes, num):
  return tf.constant(np.eye(num, dtype=np.float32)[classes] * 10.0)


def _same_image(rows):
  """Every row combines patches of one image; returns each row's image."""
  images = rows[..., 1]
  assert np.all(images == images[:, :1]), "a row mixes patches of different images"
  return images[:, 0].astype(int)


@pytest.mark.parametrize("mode, subset", [(base.TRAIN, 5), (base.TRAIN, 20), (base.EVAL, None)])
def test_jigsaw_labels_are_the_permutation_applied(mode, subset, tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # The permutation cache.
  num_perms, num_images = 20, 4
  perms = jigsaw.load_permutations(num_perms, SPLITS * SPLITS)
  seen = []

  def head(rows):  # [M, 9, 2] -> the permutation the 9 patches are in.
    cells = rows[..., 0].astype(int)
    matches = np.all(cells[:, None, :] == perms[None], axis=-1)  # [M, K]
    assert np.all(matches.sum(axis=1) == 1), "a row is not in one of the permutations"
    seen.append((_same_image(rows), matches.argmax(axis=1)))
    return _one_hot(matches.argmax(axis=1), num_perms)

  config = Config(task="jigsaw", workdir="/unused", num_permutations=num_perms,
                  perm_subset_size=subset or num_perms, splits_per_side=SPLITS)
  # Training crops jitter inside each cell: the patches still come in grid order.
  batch = _batch("crop_patches", _grid_images(num_images), mode == base.TRAIN,
                 splits_per_side=SPLITS, patch_jitter=2 if mode == base.TRAIN else 0)
  for _ in range(2):
    spec = jigsaw.model_fn(PatchReader(head), batch, mode, config)
    np.testing.assert_array_equal(spec.metrics["accuracy"].numpy(), 1.0)
  per_call = subset if mode == base.TRAIN else num_perms
  for images, applied in seen:
    assert len(applied) == num_images * per_call
    # Rows b*K .. b*K+K-1 are image b's, each in the same K distinct permutations.
    np.testing.assert_array_equal(images, np.repeat(np.arange(num_images), per_call))
    groups = applied.reshape(num_images, per_call)
    assert all(len(set(g)) == per_call and np.array_equal(g, groups[0]) for g in groups)
  if mode == base.TRAIN and subset < num_perms:
    # A random subset per batch: the two calls drew different ones (chance 1 in C(20,5)).
    assert set(seen[0][1]) != set(seen[1][1])


def test_relative_patch_location_labels_are_the_neighbour_position():
  num_images = 3

  def head(rows):  # [M, 2, 2]: (centre, neighbour) -> the neighbour's position.
    _same_image(rows)
    centre, neighbour = rows[:, 0, 0].astype(int), rows[:, 1, 0].astype(int)
    assert np.all(centre == (SPLITS * SPLITS) // 2)
    offsets = [(n // SPLITS - c // SPLITS, n % SPLITS - c % SPLITS)
               for c, n in zip(centre, neighbour)]
    return _one_hot([rpl.NEIGHBOUR_OFFSETS.index(o) for o in offsets], rpl.NUM_CLASSES)

  config = Config(task="relative_patch_location", workdir="/unused", splits_per_side=SPLITS)
  batch = _batch("crop_patches", _grid_images(num_images), True, splits_per_side=SPLITS,
                 patch_jitter=2)
  spec = rpl.model_fn(PatchReader(head), batch, base.TRAIN, config)
  assert spec.metrics["accuracy"].shape == (num_images * rpl.NUM_CLASSES,)
  np.testing.assert_array_equal(spec.metrics["accuracy"].numpy(), 1.0)


def test_rotation_labels_are_the_rotation_applied():
  """A marker in each image's top-left corner: where the backbone finds it tells the rotation
  (np.rot90's, counter-clockwise); images differ so that a mixed-up order shows."""
  num_images, size = 3, 12
  images = np.zeros([num_images, size, size, 3], np.float32)
  images[:, :3, :3, 0] = 1.0
  images[..., 1] = np.arange(num_images)[:, None, None] / 10
  corners = [np.unravel_index(np.argmax(np.rot90(images[0, ..., 0], k)), (size, size))
             for k in range(rotation.NUM_ROTATIONS)]

  def backbone(flat, training=None):
    found = [np.unravel_index(np.argmax(x[..., 0]), (size, size)) for x in np.asarray(flat)]
    return {"logits": _one_hot([corners.index(c) for c in found], rotation.NUM_ROTATIONS)}

  batch = _batch("rotate", images, True)
  assert batch["image"].shape == (num_images, 4, size, size, 3)
  spec = rotation.model_fn(backbone, batch, base.TRAIN, None)
  assert spec.metrics["accuracy"].shape == (num_images * rotation.NUM_ROTATIONS,)
  np.testing.assert_array_equal(spec.metrics["accuracy"].numpy(), 1.0)


def test_exemplar_labels_group_the_copies_of_each_image():
  """Copies [B,N] with channel 0 = the source image, channel 1 = the copy: an embedding of the
  source image is perfect for the labels (no triplet loss, every copy retrieves its own image);
  one of the copy's position is not (the labels are not per position)."""
  num_images, num_copies = 4, 3
  images = np.zeros([num_images, num_copies, 8, 8, 3], np.float32)
  images[..., 0] = np.arange(num_images)[:, None, None, None]
  images[..., 1] = np.arange(num_copies)[None, :, None, None]
  batch = {"image": tf.constant(images), "label": tf.zeros([num_images], tf.int32)}
  config = Config(task="exemplar", workdir="/unused", margin=0.5)

  def reading(channel):
    def model(flat, training=None):
      ids = np.asarray(flat)[:, 0, 0, channel].astype(int)
      return {"logits": tf.constant(np.eye(16, dtype=np.float32)[ids])}
    return model

  spec = exemplar.model_fn(reading(0), batch, base.TRAIN, config)
  assert float(spec.loss) == 0.0
  np.testing.assert_array_equal(spec.metrics["accuracy"].numpy(), 1.0)
  # Every copy is a positive of its image's N-1 other copies, and of no other.
  assert spec.metrics["loss"].shape == (num_images * num_copies * (num_copies - 1),)
  wrong = exemplar.model_fn(reading(1), batch, base.TRAIN, config)
  assert float(wrong.loss) >= config.margin - 1e-6  # Positives as far as the negatives.
  np.testing.assert_array_equal(wrong.metrics["accuracy"].numpy(), 0.0)
