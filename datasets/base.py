"""The contract of a dataset source: what it holds (`DatasetInfo`), how it reads a split
(`Source`, `RawSplit`), and the TFDS-style split strings every source accepts. The sources
themselves: datasets/sources.py (TFDS, the embedded set), datasets/folder.py (image folders)."""

import dataclasses
import types
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

# (number of shards, this shard's index) when several input pipelines read one split.
Shard = Optional[Tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset holds. `image_shape` is of the images `get_data` yields before
  preprocessing ((H, W, 3), grayscale sources made RGB), or None if sizes vary."""
  name: str
  num_classes: int
  class_names: List[str]
  splits: Dict[str, int]
  image_shape: Optional[Tuple[int, int, int]]
  train_split: Optional[str] = None
  eval_split: Optional[str] = None


class DatasetNotPreparedError(ValueError):
  """A TFDS dataset is not prepared in the data_dir; the message says how to prepare it."""


class Source:
  """How to read one dataset. Subclasses implement `info` and `read`."""

  name: str = ""
  train_split: Optional[str] = None
  eval_split: Optional[str] = None

  def prepare(self, data_dir: Optional[str] = None) -> None:
    """Makes the data available in data_dir, or raises an error saying how to."""

  def info(self, data_dir: Optional[str] = None) -> DatasetInfo:
    raise NotImplementedError

  def num_examples(self, split: str, data_dir: Optional[str] = None) -> int:
    """Examples in `split`, a split name or a TFDS-style slice like 'train[:90%]'."""
    return split_size(self.name, split, self.info(data_dir).splits)

  def split_classes(self, split: str, data_dir: Optional[str] = None) -> Optional[List[str]]:
    """The names of the classes that `split` holds examples of, where that is known without
    reading its examples (an image folder's listing); None where it is not."""
    del split, data_dir
    return None

  def read(self, split: str, *, data_dir: Optional[str], shuffle_files: bool,
           seed: Optional[int], shard: Shard = None,
           indices: Optional[np.ndarray] = None) -> "RawSplit":
    """The raw records of `split` (this shard's part of it) and how to decode them.
    `indices`: only the records at these positions of the split in its stored order, in that
    order (sorted, unique), read without reading the others where the storage allows."""
    raise NotImplementedError

  def labels(self, split: str, data_dir: Optional[str] = None) -> np.ndarray:
    """The labels of `split`'s examples in its stored order (int64 [N]), without decoding an
    image; sources whose raw records hold the image bytes override it to skip them."""
    raw = self.read(split, data_dir=data_dir, shuffle_files=False, seed=None)
    batches = raw.records.map(lambda record: record["label"]).batch(4096)
    return np.concatenate([np.zeros([0], np.int64)] + [b.numpy() for b in batches])


@dataclasses.dataclass(frozen=True)
class RawSplit:
  """Records cheap to shuffle (encoded images, paths), and the transform
  `decode(records, num_parallel_calls)` -> {'image': uint8 [H,W,C], 'label': int}.
  `jpeg`: the records' `image` is a JPEG's bytes, which preprocessing that starts with a crop
  may decode in part instead (datasets/preprocess.py, JPEG_PREFIXES)."""
  records: tf.data.Dataset
  decode: Callable[[tf.data.Dataset, Any], tf.data.Dataset]
  jpeg: bool = False


def select_records(records: tf.data.Dataset, indices: Optional[np.ndarray]
                   ) -> tf.data.Dataset:
  """`records` at `indices` (positions in its order; None: all), by reading and dropping the
  others up to the last one: where a source cannot read chosen records alone (storage other
  than TFRecord files, the mock data of tests)."""
  if indices is None:
    return records
  keep = np.zeros([int(indices[-1]) + 1 if len(indices) else 0], bool)
  keep[indices] = True
  keep = tf.constant(keep)
  size = int(keep.shape[0])
  return records.take(size).enumerate().filter(lambda i, _: keep[i]).map(lambda _, r: r)


def split_instructions(dataset: str, split: str, sizes: Dict[str, int]) -> list:
  """A split string as [(split name, start, stop)], checked against `sizes`.

  Accepts what TFDS accepts: 'train', 'train[:90%]', 'train[1000:]', 'train+test'.
  """
  if not isinstance(split, str) or not split.strip():
    raise ValueError(f"dataset {dataset!r}: split must be a non-empty string like 'train' "
                     f"or 'train[:90%]', got {split!r}; splits: {', '.join(sorted(sizes))}")
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split)
  except (ValueError, AssertionError) as e:
    raise ValueError(f"dataset {dataset!r}: cannot parse split {split!r} ({e}); use a split "
                     f"name or a TFDS slice like 'train[:90%]'; splits: "
                     f"{', '.join(sorted(sizes))}") from None
  for name in split_names(split):
    if name not in sizes:
      where = "" if name == split.strip() else f" (in {split!r})"
      raise ValueError(f"dataset {dataset!r} has no split {name!r}{where}; "
                       f"splits: {', '.join(sorted(sizes))}")
  infos = {name: types.SimpleNamespace(num_examples=n, shard_lengths=[n])
           for name, n in sizes.items()}
  try:
    absolute = instruction.to_absolute(infos)
  except ValueError as e:
    raise ValueError(f"dataset {dataset!r}: bad split {split!r}: {e}; splits: "
                     + ", ".join(f"{k} ({v} examples)" for k, v in sorted(sizes.items()))
                     ) from None
  return [(a.splitname, a.from_ or 0, sizes[a.splitname] if a.to is None else a.to)
          for a in absolute]


def split_names(split: str) -> List[str]:
  """The split names in a split string: 'train[:90%]+test' -> ['train', 'test']."""
  return [part.split("[")[0].strip() for part in split.split("+")]


def split_size(dataset: str, split: str, sizes: Dict[str, int]) -> int:
  """Number of examples of a split string."""
  return sum(max(stop - start, 0) for _, start, stop in split_instructions(dataset, split, sizes))
