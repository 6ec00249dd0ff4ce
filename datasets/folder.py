"""Image folders as datasets: `folder:<root>` reads `<root>/<split>/<class>/*.png|jpg|jpeg`.

Splits are the sub-folders of `<root>`, classes the sub-folders of the splits:
class names are the sorted union over all splits, so a label means the same class
in every split. Extensions are matched case-insensitively; other files are ignored.
`num_examples` counts files. Within a split, files are ordered by a hash of
`<class>/<file name>`: deterministic, and slices like `train[:90%]` hold every class.

Unreadable files (truncated, not an image, removed after listing) never stop the
pipeline: each is skipped and reported by path on stderr ("skipping unreadable
image file ...") every time the pipeline meets it (once per epoch), so an epoch
may yield fewer examples than `num_examples`. `find_unreadable(root)` lists them
all up front, e.g. to delete them.
"""

import functools
import hashlib
import os
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from datasets.base import (DatasetInfo, RawSplit, Shard, Source, split_instructions, split_names,
                           split_size)

EXTENSIONS = (".png", ".jpg", ".jpeg")
_LAYOUT = "<root>/<split>/<class>/*.png|jpg|jpeg"


@functools.lru_cache(maxsize=4096)
def _listdir(path: str, mtime_ns: int) -> Tuple[Tuple[str, bool], ...]:
  """(name, is_dir) of the visible entries of a directory; cached while it is unchanged."""
  del mtime_ns  # Part of the cache key only.
  with os.scandir(path) as entries:
    return tuple(sorted((e.name, e.is_dir()) for e in entries if not e.name.startswith(".")))


def _entries(path: str) -> Tuple[Tuple[str, bool], ...]:
  return _listdir(path, os.stat(path).st_mtime_ns)


def _order_key(class_name: str, file_name: str) -> str:
  return hashlib.md5(f"{class_name}/{file_name}".encode()).hexdigest()


@functools.lru_cache(maxsize=16)
def _split_files(split_dir: str, classes: Tuple[str, ...], signature: tuple
                 ) -> Tuple[Tuple[str, int], ...]:
  """(path, label) of the images of one split, in hash order."""
  labels = {name: i for i, name in enumerate(classes)}
  keyed = []
  for class_name, _ in signature:
    class_dir = os.path.join(split_dir, class_name)
    for name, is_dir in _entries(class_dir):
      if not is_dir and name.lower().endswith(EXTENSIONS):
        keyed.append((_order_key(class_name, name), os.path.join(class_dir, name),
                      labels[class_name]))
  keyed.sort()
  return tuple((path, label) for _, path, label in keyed)


class FolderSource(Source):
  """A dataset read from image files in class folders."""

  def __init__(self, root: str):
    if not root:
      raise ValueError(f"folder dataset needs a root: 'folder:<root>' with {_LAYOUT}")
    self.root = os.path.abspath(os.path.expanduser(root))
    self.name = f"folder:{root}"

  def _splits(self) -> List[str]:
    if not os.path.isdir(self.root):
      raise ValueError(f"image folder root {self.root} does not exist or is not a directory "
                       f"(dataset {self.name!r}); expected {_LAYOUT}. The suite's real-photo "
                       f"folder is made by `.venv/bin/python scripts/prepare_photos.py "
                       f"--out={self.root}`")
    splits = [name for name, is_dir in _entries(self.root) if is_dir]
    if not splits:
      raise ValueError(f"image folder root {self.root} has no split folders; expected "
                       f"{_LAYOUT}, e.g. {self.root}/train/<class>/img.png")
    return splits

  def _classes(self, split: str) -> List[str]:
    return [name for name, is_dir in _entries(os.path.join(self.root, split)) if is_dir]

  def class_names(self) -> List[str]:
    """Sorted class folder names, over all splits."""
    names = sorted({c for split in self._splits() for c in self._classes(split)})
    if not names:
      raise ValueError(f"image folder root {self.root} has no class folders in its splits "
                       f"({', '.join(self._splits())}); expected {_LAYOUT}")
    return names

  def files(self, split: str) -> List[Tuple[str, int]]:
    """(path, label) of every image of a split name, in the split's fixed order."""
    splits = self._splits()
    if split not in splits:
      raise ValueError(f"image folder {self.root} has no split {split!r} (no directory "
                       f"{os.path.join(self.root, split)}); splits: {', '.join(splits)}")
    classes = tuple(self.class_names())
    split_dir = os.path.join(self.root, split)
    # Listings are cached while the class folders are unchanged (their mtimes).
    signature = tuple((c, os.stat(os.path.join(split_dir, c)).st_mtime_ns)
                      for c in self._classes(split))
    return list(_split_files(split_dir, classes, signature))

  def _sizes(self, split: Optional[str] = None) -> Dict[str, int]:
    """Files per split; checks first that the split names in `split` exist."""
    splits = self._splits()
    for name in split_names(split) if isinstance(split, str) else ():
      if name and name not in splits:
        raise ValueError(f"image folder {self.root} has no split {name!r} (no directory "
                         f"{os.path.join(self.root, name)}); splits: {', '.join(splits)}")
    return {name: len(self.files(name)) for name in splits}

  def num_examples(self, split: str, data_dir: Optional[str] = None) -> int:
    del data_dir
    return split_size(self.name, split, self._sizes(split))

  def info(self, data_dir: Optional[str] = None) -> DatasetInfo:
    """data_dir is not used: the files are read where they are."""
    del data_dir
    sizes = self._sizes()
    eval_split = next((s for s in ("validation", "val", "test") if s in sizes), None)
    names = self.class_names()
    return DatasetInfo(name=self.name, num_classes=len(names), class_names=names,
                       splits=sizes, image_shape=None,
                       train_split="train" if "train" in sizes else None, eval_split=eval_split)

  def _slice_files(self, split: str) -> List[Tuple[str, int]]:
    """(path, label) of the images of a split string ('train[:90%]+test'), in its order."""
    sizes = self._sizes(split)
    files = []
    for name, start, stop in split_instructions(self.name, split, sizes):
      files += self.files(name)[start:stop]
    return files

  def split_classes(self, split: str, data_dir: Optional[str] = None) -> List[str]:
    del data_dir
    names = self.class_names()
    return [names[label] for label in sorted({label for _, label in self._slice_files(split)})]

  def labels(self, split: str, data_dir: Optional[str] = None) -> np.ndarray:
    del data_dir
    return np.array([label for _, label in self._slice_files(split)], np.int64)

  def read(self, split: str, *, data_dir: Optional[str], shuffle_files: bool,
           seed: Optional[int], shard: Shard = None,
           indices: Optional[np.ndarray] = None) -> RawSplit:
    del data_dir
    files = self._slice_files(split)
    if indices is not None:
      files = [files[i] for i in indices]
    if shard is not None:
      files = files[shard[1]::shard[0]]
    paths = [path for path, _ in files]
    labels = tf.constant([label for _, label in files], tf.int64)
    records = tf.data.Dataset.from_tensor_slices(
        {"path": tf.constant(paths, tf.string), "label": labels})
    if shuffle_files and files:
      records = records.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return RawSplit(records, decode_images)


def _read_image(path: tf.Tensor) -> tf.Tensor:
  return tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)


def _try_decode(record: dict) -> tf.data.Dataset:
  """One element: the decoded record with ok=True, or an empty image with ok=False."""
  decoded = tf.data.Dataset.from_tensors(record).map(
      lambda r: {"image": _read_image(r["path"]), "label": r["label"], "path": r["path"],
                 "ok": True}).ignore_errors()
  failed = tf.data.Dataset.from_tensors(
      {"image": tf.zeros([0, 0, 3], tf.uint8), "label": record["label"], "path": record["path"],
       "ok": False})
  return decoded.concatenate(failed).take(1)


def _keep(example: dict) -> tf.Tensor:
  def report():
    tf.print("skipping unreadable image file", example["path"], output_stream=sys.stderr)
    return False
  return tf.cond(example["ok"], lambda: True, report)


def decode_images(records: tf.data.Dataset, num_parallel_calls=tf.data.AUTOTUNE
                  ) -> tf.data.Dataset:
  """{'path', 'label'} -> {'image': uint8 [H,W,3], 'label'}, skipping unreadable files."""
  ds = records.interleave(_try_decode, cycle_length=None, block_length=1,
                          num_parallel_calls=num_parallel_calls, deterministic=True)
  return ds.filter(_keep).map(lambda ex: {"image": ex["image"], "label": ex["label"]})


def find_unreadable(root: str) -> List[str]:
  """Paths of the image files under a folder dataset's root that cannot be decoded."""
  source = FolderSource(root)
  records = []
  for split in source._splits():  # pylint: disable=protected-access
    records += source.files(split)
  if not records:
    return []
  ds = tf.data.Dataset.from_tensor_slices(
      {"path": [p for p, _ in records], "label": [l for _, l in records]})
  ds = ds.interleave(_try_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return [ex["path"].decode() for ex in ds.filter(lambda ex: tf.logical_not(ex["ok"]))
          .map(lambda ex: {"path": ex["path"]}).as_numpy_iterator()]
