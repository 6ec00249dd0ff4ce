"""A real-photo image folder, made from the photographs that scikit-image ships (no download).

`prepare(root)` writes `<root>/train/<class>/*.png` and `<root>/test/<class>/*.png` (the layout
of datasets/folder.py: `--dataset=folder:<root>`): 64x64 crops of 16 photographs of the
`skimage.data` set that its wheel carries (8 in colour: an astronaut, a cat, coffee, a deep-sky
field, a stained tissue, a motorcycle, a retina, a rocket; 8 in grey: bricks, a cameraman, a cell,
a clock, coins, grass, gravel, the moon). The class of a crop is the photograph it was cut from,
so the task is to tell scenes, objects and textures of real photographs apart from a small
window of them: natural image statistics, lighting, noise and JPEG artefacts that the rendered
`shapes` lack.

Each photograph is resized so that its shorter side is 512 pixels and cut into a 4x4 grid of
blocks; 4 blocks (one per row and per column) give the test crops, the other 12 the training
crops, so no test pixel is ever seen in training. A crop is a random square inside one block,
between 64 pixels and the block's shorter side, resized to 64x64: the crops of a class differ in
place and scale. Deterministic given the seed. The folder is written beside its final place and
renamed into it, with `photos.json` (what made it), so an interrupted run leaves nothing half
written and a finished one is kept.
"""

import json
import os
import shutil
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from core import files

# (class name, the skimage.data function that loads the photograph).
PHOTOS = (
  ("astronaut", "astronaut"), ("cat", "chelsea"), ("coffee", "coffee"),
  ("deep_field", "hubble_deep_field"), ("tissue", "immunohistochemistry"),
  ("motorcycle", "stereo_motorcycle"), ("retina", "retina"), ("rocket", "rocket"),
  ("bricks", "brick"), ("cameraman", "camera"), ("cell", "cell"), ("clock", "clock"),
  ("coins", "coins"), ("grass", "grass"), ("gravel", "gravel"), ("moon", "moon"),
)
CLASSES = tuple(name for name, _ in PHOTOS)
SHORTER_SIDE = 512
BLOCKS = 4
INFO_FILE = "photos.json"
SPLITS = ("train", "test")


def load_photo(name: str) -> np.ndarray:
  """The photograph of class `name` as uint8 RGB [H, W, 3] (grey ones repeated)."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  functions = dict(PHOTOS)
  if name not in functions:
    raise ValueError(f"unknown photo class {name!r}; valid choices: {', '.join(CLASSES)}")
  image = getattr(skimage.data, functions[name])()
  if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity).
    image = image[0]
  image = np.asarray(image)
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def is_test_block(row: int, col: int) -> bool:
  """The blocks of the test crops: one per row and per column of the 4x4 grid."""
  return (row + col) % BLOCKS == BLOCKS - 1


def _resized(image: np.ndarray) -> Image.Image:
  h, w = image.shape[:2]
  scale = SHORTER_SIDE / min(h, w)
  size = (max(SHORTER_SIDE, round(w * scale)), max(SHORTER_SIDE, round(h * scale)))
  return Image.fromarray(image).resize(size, Image.Resampling.BICUBIC)


def block_boxes(width: int, height: int, test: bool) -> Sequence[Tuple[int, int, int, int]]:
  """(left, top, right, bottom) of the blocks of one split of a width x height photograph."""
  xs = np.linspace(0, width, BLOCKS + 1).astype(int)
  ys = np.linspace(0, height, BLOCKS + 1).astype(int)
  return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(BLOCKS) for c in range(BLOCKS)
          if is_test_block(r, c) == test]


def crops(photo: Image.Image, count: int, test: bool, size: int,
          rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
  """(`count` crops [count, size, size, 3] uint8, their boxes [count, 4]) of one split."""
  boxes = block_boxes(photo.width, photo.height, test)
  out = np.zeros([count, size, size, 3], np.uint8)
  chosen = np.zeros([count, 4], np.int64)
  for i in range(count):
    left, top, right, bottom = boxes[rng.integers(len(boxes))]
    side = int(rng.integers(size, min(right - left, bottom - top) + 1))
    x = left + int(rng.integers(right - left - side + 1))
    y = top + int(rng.integers(bottom - top - side + 1))
    chosen[i] = (x, y, x + side, y + side)
    out[i] = np.asarray(photo.crop(tuple(chosen[i])).resize(
        (size, size), Image.Resampling.BICUBIC))
  return out, chosen


def _settings(train_per_class, test_per_class, size, seed, classes) -> Dict:
  import skimage  # pylint: disable=g-import-not-at-top
  return dict(train_per_class=train_per_class, test_per_class=test_per_class, size=size,
              seed=seed, classes=list(classes), shorter_side=SHORTER_SIDE, blocks=BLOCKS,
              source=f"scikit-image {skimage.__version__} (skimage.data)")


def prepare(root: str, train_per_class: int = 300, test_per_class: int = 100, size: int = 64,
            seed: int = 0, classes: Optional[Sequence[str]] = None) -> Dict:
  """Writes the folder under `root` unless it holds the same one already; returns its
  photos.json. A `root` holding anything else is refused, never overwritten."""
  classes = list(classes or CLASSES)
  unknown = [c for c in classes if c not in CLASSES]
  if unknown:
    raise ValueError(f"unknown photo classes {unknown}; valid choices: {', '.join(CLASSES)}")
  if len(set(classes)) != len(classes) or len(classes) < 2:
    raise ValueError(f"classes {classes!r}: give at least 2 distinct ones")
  for name, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class),
                      ("size", size)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
  if size > SHORTER_SIDE // BLOCKS:
    raise ValueError(f"size={size}: crops must fit in a block, at most "
                     f"{SHORTER_SIDE // BLOCKS} pixels")
  settings = _settings(train_per_class, test_per_class, size, seed, classes)
  root = os.path.abspath(root)
  info_path = os.path.join(root, INFO_FILE)
  if os.path.exists(root) and os.listdir(root):
    existing = files.read_json(info_path)
    if existing and existing.get("settings") == settings:
      return existing
    raise FileExistsError(
        f"{root} exists and holds {'another photo folder' if existing else 'other files'}"
        "; give another path or remove it")
  tmp = f"{root}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    counts = {split: {} for split in SPLITS}
    rng = np.random.default_rng(seed)
    for name in classes:
      photo = _resized(load_photo(name))
      for split, count in zip(SPLITS, (train_per_class, test_per_class)):
        images, _ = crops(photo, count, split == "test", size, rng)
        folder = os.path.join(tmp, split, name)
        os.makedirs(folder)
        for i, image in enumerate(images):
          Image.fromarray(image).save(os.path.join(folder, f"{name}_{i:04d}.png"))
        counts[split][name] = count
    info = dict(settings=settings, counts=counts)
    with open(os.path.join(tmp, INFO_FILE), "w") as f:
      json.dump(info, f, indent=2, sort_keys=True)
    if os.path.exists(root):
      os.rmdir(root)  # Empty (checked above).
    os.makedirs(os.path.dirname(root), exist_ok=True)
    os.rename(tmp, root)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return info
