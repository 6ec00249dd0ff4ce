"""The real-photo image folder (datasets/photos.py): layout, disjoint splits, kept and refused
folders, and the folder source reading it."""

import os

import numpy as np
from PIL import Image
import pytest

import datasets
from datasets import photos

CLASSES = ["astronaut", "bricks", "coins"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("photos") / "photos")
  info = photos.prepare(root, train_per_class=6, test_per_class=3, size=32, classes=CLASSES)
  return root, info


def test_layout_sizes_and_the_folder_source(folder):
  root, info = folder
  assert sorted(os.listdir(root)) == ["photos.json", "test", "train"]
  assert info["counts"] == {"train": dict.fromkeys(CLASSES, 6), "test": dict.fromkeys(CLASSES, 3)}
  for split, count in (("train", 6), ("test", 3)):
    assert sorted(os.listdir(os.path.join(root, split))) == CLASSES
    for name in CLASSES:
      names = sorted(os.listdir(os.path.join(root, split, name)))
      assert len(names) == count
      image = np.asarray(Image.open(os.path.join(root, split, name, names[0])))
      assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  # Grey photographs are grey in all three channels, colour ones are not.
  bricks = np.asarray(Image.open(os.path.join(root, "train", "bricks", "bricks_0000.png")))
  astronaut = np.stack([np.asarray(Image.open(os.path.join(root, "train", "astronaut", n)))
                        for n in sorted(os.listdir(os.path.join(root, "train", "astronaut")))])
  assert np.array_equal(bricks[..., 0], bricks[..., 2])
  assert not np.array_equal(astronaut[..., 0], astronaut[..., 2])
  dataset = f"folder:{root}"
  assert datasets.get_dataset_info(dataset).num_classes == 3
  assert datasets.get_num_examples(dataset, "train") == 18
  assert datasets.get_num_examples(dataset, "test") == 9


def test_test_crops_come_from_blocks_no_training_crop_touches():
  rng = np.random.default_rng(0)
  photo = photos._resized(photos.load_photo("cat"))  # 451x300: resized to 770x512.
  assert min(photo.size) == photos.SHORTER_SIDE
  train_boxes = photos.block_boxes(photo.width, photo.height, test=False)
  test_boxes = photos.block_boxes(photo.width, photo.height, test=True)
  assert len(train_boxes) == 12 and len(test_boxes) == 4
  images, boxes = photos.crops(photo, 200, True, 64, rng)
  assert images.shape == (200, 64, 64, 3)
  sides = boxes[:, 2] - boxes[:, 0]
  assert np.array_equal(sides, boxes[:, 3] - boxes[:, 1]) and sides.min() >= 64
  assert sides.max() > 96  # Several scales.
  for x0, y0, x1, y1 in boxes:
    assert any(l <= x0 and t <= y0 and x1 <= r and y1 <= b for l, t, r, b in test_boxes)
    assert not any(x0 < r and l < x1 and y0 < b and t < y1 for l, t, r, b in train_boxes)


def test_a_finished_folder_is_kept_and_another_one_refused(folder, tmp_path):
  root, info = folder
  before = os.stat(os.path.join(root, "photos.json")).st_mtime_ns
  assert photos.prepare(root, train_per_class=6, test_per_class=3, size=32,
                        classes=CLASSES) == info
  assert os.stat(os.path.join(root, "photos.json")).st_mtime_ns == before
  with pytest.raises(FileExistsError, match="holds another photo folder"):
    photos.prepare(root, train_per_class=7, test_per_class=3, size=32, classes=CLASSES)
  other = tmp_path / "mine"
  other.mkdir()
  (other / "notes.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match="holds other files"):
    photos.prepare(str(other), classes=CLASSES)
  assert (other / "notes.txt").read_text() == "keep me"
  with pytest.raises(ValueError,
                     match=r"unknown photo classes \['dog'\]; valid choices: astronaut, cat, "):
    photos.prepare(str(tmp_path / "x"), classes=["dog", "cat"])
  with pytest.raises(ValueError, match="size=200: crops must fit in a block"):
    photos.prepare(str(tmp_path / "x"), size=200)
  assert not os.path.exists(tmp_path / "x")
