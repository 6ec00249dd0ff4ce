"""Tests of the embedded dataset: renderer, shortcut-freedom, TFDS builder."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from datasets import shapes

S = shapes.SIZE


def test_render_is_deterministic_uint8_and_seed_dependent():
  a = shapes.render(np.random.default_rng(7), 3)
  b = shapes.render(np.random.default_rng(7), 3)
  c = shapes.render(np.random.default_rng(8), 3)
  assert a.dtype == np.uint8 and a.shape == (S, S, 3)
  np.testing.assert_array_equal(a, b)
  assert np.abs(a.astype(int) - c).mean() > 5


def test_render_batch_is_deterministic():
  labels = np.arange(40) % shapes.NUM_CLASSES
  a = shapes.render_batch(np.random.default_rng(1), labels)
  b = shapes.render_batch(np.random.default_rng(1), labels)
  assert a.shape == (40, S, S, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  # No two images alike.
  flat = a.reshape(40, -1).astype(np.int32)
  d = np.abs(flat[:, None] - flat[None]).mean(-1)
  assert d[~np.eye(40, dtype=bool)].min() > 5


def test_every_class_renders_an_object():
  assert len(shapes.CLASS_NAMES) == shapes.NUM_CLASSES == 10
  labels = np.repeat(np.arange(shapes.NUM_CLASSES), 5)
  images, masks = shapes.render_batch(np.random.default_rng(2), labels,
                                      return_masks=True)
  assert masks.shape == (len(labels), S, S)
  area = masks.sum((1, 2))
  assert area.min() > 40 and area.max() < 0.6 * S * S
  # The object is drawn: its pixels differ from an object-free render.
  assert images.std(axis=(1, 2)).min() > 1
  with pytest.raises(ValueError):
    shapes.render(np.random.default_rng(0), shapes.NUM_CLASSES)


@pytest.fixture(scope='module')
def many():
  """300 renders per class with object masks."""
  labels = np.repeat(np.arange(shapes.NUM_CLASSES), 300)
  images, masks = shapes.render_batch(np.random.default_rng(3), labels,
                                      return_masks=True)
  return labels, images, masks


def test_mean_colour_is_the_same_for_every_class(many):
  labels, images, _ = many
  pixels = images.reshape(len(images), -1, 3).astype(np.float32)
  per_image = pixels.mean(1)
  spread = pixels.std(1)  # Per-image colour spread, per channel.
  for stat, cap in ((per_image, 10.0), (spread, 6.0)):  # Of 255.
    overall, sd = stat.mean(0), stat.std(0)
    for c in range(shapes.NUM_CLASSES):
      m = stat[labels == c]
      dev = np.abs(m.mean(0) - overall)
      se = sd / np.sqrt(len(m))
      assert np.all(dev < 4.5 * se) and np.all(dev < cap), (
          shapes.CLASS_NAMES[c], dev, se)


def test_object_area_is_the_same_for_every_class(many):
  labels, _, masks = many
  area = masks.sum((1, 2))
  for c in range(shapes.NUM_CLASSES):
    ratio = area[labels == c].mean() / area.mean()
    assert 0.88 < ratio < 1.12, (shapes.CLASS_NAMES[c], ratio)


def test_object_placement_is_isotropic(many):
  _, _, masks = many
  inside = masks > 0.5
  rows, cols = inside.any(2), inside.any(1)
  idx = np.arange(S)

  def centre(m):
    lo = np.where(m, idx, S).min(1)
    hi = np.where(m, idx, -1).max(1)
    return (lo + hi + 1) / 2

  cy, cx = centre(rows), centre(cols)
  assert abs(cx.mean() - S / 2) < 1.0 and abs(cy.mean() - S / 2) < 1.0
  # Box centres are drawn isotropically, but objects larger than the frame are clipped, tall ones
  # at top and bottom more often, so visible boxes spread a little less vertically (1.10 for
  # 1.1.0). The raw-pixel rotation probe of bench/shapes_pixel_probe.py checks that this does
  # not give the rotation away.
  assert 0.87 < cx.std() / cy.std() < 1.15


def _halves_balanced(images):
  """Per-image (top - bottom) and (left - right) mean-intensity differences:
  their averages are zero within 4.5 standard errors, and small."""
  x = images.astype(np.float64).mean(-1)
  h = S // 2
  for diff in (x[:, :h].mean((1, 2)) - x[:, h:].mean((1, 2)),
               x[:, :, :h].mean((1, 2)) - x[:, :, h:].mean((1, 2))):
    se = diff.std() / np.sqrt(len(diff))
    assert abs(diff.mean()) < 4.5 * se and abs(diff.mean()) < 2.0, (
        diff.mean(), se)


def test_background_statistics_are_rotation_invariant():
  rng = np.random.default_rng(4)
  bg = shapes.render_backgrounds(rng, 3000)
  assert bg.shape == (3000, S, S, 3) and bg.dtype == np.uint8
  _halves_balanced(bg)
  # Same mean image under a 90-degree turn, at 8x8-block resolution.
  blocks = bg.astype(np.float64).mean((0, 3)).reshape(8, 8, 8, 8).mean((1, 3))
  assert np.abs(blocks - np.rot90(blocks)).max() < 3
  # And the mean image is flat: no vignette, no gradient.
  assert blocks.max() - blocks.min() < 4


def test_backgrounds_without_clutter_are_deterministic():
  a = shapes.render_backgrounds(np.random.default_rng(5), 8, clutter=False)
  b = shapes.render_backgrounds(np.random.default_rng(5), 8, clutter=False)
  np.testing.assert_array_equal(a, b)


def _prepare(data_dir):
  builder = shapes.Shapes(data_dir=str(data_dir), config='small')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


def _load(builder, split):
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1,
                                          shuffle_files=False))
  return data['image'], data['label']


def test_small_config_prepares_deterministically(tmp_path):
  a = _prepare(tmp_path / 'a')
  info = a.info
  assert info.name == 'shapes' and str(info.version) == '1.1.0'
  assert info.features['label'].names == list(shapes.CLASS_NAMES)
  assert tuple(info.features['image'].shape) == (S, S, 3)
  assert info.splits['train'].num_examples == 1000
  assert info.splits['test'].num_examples == 300
  b = _prepare(tmp_path / 'b')
  for split, n in (('train', 1000), ('test', 300)):
    images, labels = _load(a, split)
    assert images.shape == (n, S, S, 3) and images.dtype == np.uint8
    counts = np.bincount(labels, minlength=shapes.NUM_CLASSES)
    assert counts.min() >= 0.9 * n / 10 and counts.max() <= 1.1 * n / 10
    images_b, labels_b = _load(b, split)
    np.testing.assert_array_equal(labels, labels_b)
    np.testing.assert_array_equal(images, images_b)
  # Train and test are different images.
  train, _ = _load(a, 'train')
  test, _ = _load(a, 'test')
  assert not np.array_equal(train[:300], test)
