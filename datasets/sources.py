"""Dataset sources: where examples come from, what a dataset holds, how to prepare it.

A source reads one split as a dataset of cheap raw records (encoded images, file
paths) that `get_data` shuffles, then decodes them to `{'image': uint8 [H,W,C],
'label': int}`. Names resolve as follows:

- a name registered in `DATASETS` (`imagenet2012`, `places365_small`, `cifar10`,
  `cifar100`, the embedded `shapes` and `shapes_small`);
- `folder:<root>`: an image folder `<root>/<split>/<class>/*.png|jpg|jpeg` (datasets/folder.py);
- any other dataset name TFDS knows (`name`, `name/config`, `name:version`).

TFDS sets read data prepared beforehand in `data_dir` (None: the TFDS default);
nothing here downloads. The embedded `shapes` sets are generated locally on first use.

Registered sets, train split / eval split (also in `DatasetInfo.train_split/eval_split`):
  imagenet2012      train (1,281,167) / validation (50,000); archives go in the manual dir
  places365_small   train (1,803,460) / validation (36,500); `test` has no labels
  cifar10, cifar100 train (50,000) / test (10,000)
  shapes            train / test (config `default` of datasets/shapes.py)
  shapes_small      train / test (config `small`, for tests and demos)
Splits may be sliced as in TFDS: 'train[:90%]', 'train[90%:]', 'train[:1000]'.
"""

import fcntl
import os
import re
from typing import Dict, List, Optional, Tuple

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from core import options
from core.registry import Registry
from datasets import records as records_lib
from datasets.base import (DatasetInfo, DatasetNotPreparedError, RawSplit, Shard, Source,
                           select_records, split_instructions, split_size)

DATASETS: Registry[Source] = Registry("dataset")


# -------------------------------------------------------------------- TFDS
def _default_data_dir() -> str:
  return tfds.core.constants.get_default_data_dir()


class TfdsSource(Source):
  """A dataset prepared by TFDS in data_dir. `manual` says what to put in the manual dir."""

  def __init__(self, tfds_name: str, train_split: Optional[str] = None,
               eval_split: Optional[str] = None, manual: Optional[str] = None):
    self.name = tfds_name
    self.tfds_name = tfds_name
    self.train_split = train_split
    self.eval_split = eval_split
    self.manual = manual

  def _make_builder(self, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    return tfds.builder(self.tfds_name, data_dir=data_dir)

  def builder(self, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
    """The TFDS builder, with its data prepared (or DatasetNotPreparedError)."""
    builder = self._make_builder(data_dir)
    if not builder.is_prepared():
      self._prepare(builder, data_dir)
      builder = self._make_builder(data_dir)  # What was prepared (maybe by another process).
    return builder

  def _prepare(self, builder, data_dir: Optional[str]) -> None:
    raise DatasetNotPreparedError(self._not_prepared_message(builder, data_dir))

  def _not_prepared_message(self, builder, data_dir: Optional[str]) -> str:
    root = data_dir or getattr(builder, "_data_dir_root", None) or _default_data_dir()
    msg = (f"dataset {self.name!r} is not prepared in data_dir {root} (no "
           f"{builder.data_dir}/dataset_info.json). Prepare it once with\n"
           f"  tfds build {self.tfds_name} --data_dir {root}\n")
    if self.manual:
      msg += (f"{self.tfds_name} cannot be downloaded automatically: first put {self.manual} "
              f"in {os.path.join(root, 'downloads', 'manual')} (or pass --manual_dir to "
              f"tfds build).\n")
    base = os.path.join(root, builder.name)
    if tf.io.gfile.isdir(base):
      found = sorted(tf.io.gfile.listdir(base))
      msg += (f"{base} holds {', '.join(f.rstrip('/') for f in found)}, not version "
              f"{builder.version}; to use another version, name it like "
              f"'{builder.name}:<version>'.\n")
    return msg + "Or pass the data_dir where it is prepared."

  def prepare(self, data_dir: Optional[str] = None) -> None:
    self.builder(data_dir)

  def info(self, data_dir: Optional[str] = None) -> DatasetInfo:
    builder = self.builder(data_dir)
    features = builder.info.features
    image, label = self._features(builder)
    shape = tuple(features[image].shape)
    image_shape = None if None in shape[:2] else (int(shape[0]), int(shape[1]), 3)
    label_feature = features[label]
    return DatasetInfo(
        name=self.name, num_classes=int(label_feature.num_classes),
        class_names=list(label_feature.names),
        splits=_split_sizes(builder),
        image_shape=image_shape, train_split=self.train_split, eval_split=self.eval_split)

  def _features(self, builder) -> Tuple[str, str]:
    """The names of the image and label features: an Image or a uint8 [H,W,C] Tensor, and a
    ClassLabel."""
    features = builder.info.features
    keys = list(features.keys()) if isinstance(features, tfds.features.FeaturesDict) else []
    image = features["image"] if "image" in keys else None
    if not (isinstance(image, tfds.features.Image) or (
        isinstance(image, tfds.features.Tensor) and image.tf_dtype == tf.uint8
        and len(image.shape) == 3)):
      raise ValueError(f"dataset {self.name!r} has no 'image' feature with uint8 [H,W,C] images "
                       f"(features: {', '.join(keys)}); only image classification sets work here")
    if not isinstance(features["label"] if "label" in keys else None,
                      tfds.features.ClassLabel):
      raise ValueError(f"dataset {self.name!r} has no 'label' ClassLabel feature "
                       f"(features: {', '.join(keys)}); only image classification sets work here")
    return "image", "label"

  def num_examples(self, split: str, data_dir: Optional[str] = None) -> int:
    return split_size(self.name, split, _split_sizes(self.builder(data_dir)))

  def _checked_builder(self, split: str, data_dir: Optional[str]):
    """The builder, once `split` is known to be a valid split of it (a clear error if not)."""
    builder = self.builder(data_dir)
    split_instructions(self.name, split, _split_sizes(builder))
    return builder

  def _record_files(self, builder, split: str) -> Optional[List[Tuple[str, int, int]]]:
    """[(path, skip, take)]: the TFRecord files that hold `split`, in its stored order, and its
    records in each; None where it is not stored so (another file format; the mock data of
    tests, which has no files)."""
    if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
      return None
    files = []
    for instruction in builder.info.splits[split].file_instructions:
      path = os.fspath(instruction.filename)
      if not tf.io.gfile.exists(path):
        return None
      take = instruction.take
      files.append((path, instruction.skip,
                    instruction.examples_in_shard - instruction.skip if take < 0 else take))
    return files

  def labels(self, split: str, data_dir: Optional[str] = None) -> np.ndarray:
    """From each record's label feature alone: the frames' heads, the entries' heads and keys,
    and the label's entry are read; the image bytes are not (datasets/records.py)."""
    builder = self._checked_builder(split, data_dir)
    files = self._record_files(builder, split)
    if files is None:
      return super().labels(split, data_dir)
    _, label = self._features(builder)
    return np.concatenate([np.zeros([0], np.int64)] + [
        records_lib.int64_features(path, records_lib.file_spans(path, skip, take), label)
        for path, skip, take in files])

  def read(self, split: str, *, data_dir: Optional[str], shuffle_files: bool,
           seed: Optional[int], shard: Shard = None,
           indices: Optional[np.ndarray] = None) -> RawSplit:
    builder = self._checked_builder(split, data_dir)
    image, label = self._features(builder)
    if shard is not None:
      split = tfds.even_splits(split, n=shard[0])[shard[1]]
    # Encoded images are decoded after the shuffle: a buffer of them takes less memory.
    feature = builder.info.features[image]
    encoded = isinstance(feature, tfds.features.Image)
    files = self._record_files(builder, split) if indices is not None and encoded else None
    if files is not None:  # The chosen records alone, found from the frames' heads.
      spans = [records_lib.file_spans(path, skip, take) for path, skip, take in files]
      which = np.concatenate([np.full([len(s)], i, np.int64) for i, s in enumerate(spans)])
      spans = np.concatenate(spans)
      parse = {image: tf.io.FixedLenFeature([], tf.string),
               label: tf.io.FixedLenFeature([], tf.int64)}
      records = records_lib.read_records([path for path, _, _ in files], which[indices],
                                         spans[indices])
      records = records.map(lambda serialized: tf.io.parse_single_example(serialized, parse))
    else:
      # Unshuffled, the files are read one after the other (TFDS interleaves 16 by default):
      # the stored order, as `labels` and `indices` count it.
      read_config = tfds.ReadConfig(shuffle_seed=seed) if shuffle_files else tfds.ReadConfig(
          interleave_cycle_length=1)
      records = builder.as_dataset(
          split=split, shuffle_files=shuffle_files,
          decoders={image: tfds.decode.SkipDecoding()} if encoded else None,
          read_config=read_config)
      records = select_records(records, indices)
    records = records.map(lambda ex: {"image": ex[image], "label": ex[label]})

    def decode(ds: tf.data.Dataset, num_parallel_calls) -> tf.data.Dataset:
      if not encoded:
        return ds
      return ds.map(lambda ex: {"image": feature.decode_example(ex["image"]),
                                "label": ex["label"]},
                    num_parallel_calls=num_parallel_calls)

    return RawSplit(records, decode,
                    jpeg=encoded and getattr(feature, "encoding_format", None) == "jpeg")


def _split_sizes(builder) -> Dict[str, int]:
  """Examples per split of a prepared TFDS builder."""
  return {name: int(s.num_examples) for name, s in builder.info.splits.items()}


def write_tfds_metadata(data_dir: str, name: str, split_sizes: Dict[str, int]) -> str:
  """Writes the metadata of a prepared TFDS set, without data, for offline tests:

      write_tfds_metadata(tmp, "cifar10", {"train": 500, "test": 100})
      with tfds.testing.mock_data(num_examples=10, data_dir=tmp,
                                  policy=tfds.testing.MockPolicy.USE_FILES):
        get_data("cifar10", "train[:90%]", ..., data_dir=tmp)  # 10 random examples

  Split names and sizes are then known (get_num_examples, split checks); the mock
  yields `num_examples` random examples for any split. Returns the version dir.
  """
  builder = tfds.builder(name, data_dir=data_dir)
  builder.info.set_splits(tfds.core.SplitDict(
      [tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0)
       for split, n in split_sizes.items()]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  return builder.data_dir


class ShapesSource(TfdsSource):
  """The embedded dataset (datasets/shapes.py): generated and prepared locally on first use."""

  def __init__(self, config: str, name: str):
    super().__init__(f"shapes/{config}", train_split="train", eval_split="test")
    self.name = name
    self.config = config

  def _make_builder(self, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
    from datasets import shapes  # pylint: disable=g-import-not-at-top  (lazy: written apart)
    return shapes.Shapes(config=self.config, data_dir=data_dir)

  def _prepare(self, builder, data_dir: Optional[str]) -> None:
    """Generates the data once: processes that start together (grid cells side by side, SLURM
    jobs) take turns under a lock in the data directory, and the later ones find it done."""
    root = data_dir or _default_data_dir()
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{self.name}.prepare.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if self._make_builder(data_dir).is_prepared():
        return
      logging.info("Generating the embedded dataset %s in %s (once).", self.name,
                   builder.data_dir)
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))


_IMAGENET_MANUAL = ("ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (from "
                    "https://image-net.org/download-images)")

DATASETS.register("imagenet2012", TfdsSource(
    "imagenet2012", train_split="train", eval_split="validation", manual=_IMAGENET_MANUAL))
DATASETS.register("places365_small", TfdsSource(
    "places365_small", train_split="train", eval_split="validation"))
DATASETS.register("cifar10", TfdsSource("cifar10", train_split="train", eval_split="test"))
DATASETS.register("cifar100", TfdsSource("cifar100", train_split="train", eval_split="test"))
DATASETS.register("shapes", ShapesSource("default", name="shapes"))
DATASETS.register("shapes_small", ShapesSource("small", name="shapes_small"))

FOLDER_PREFIX = options.FOLDER_PREFIX


def _tfds_knows(name: str) -> bool:
  """Whether TFDS has code for `name` ('name', 'name/config', 'name:1.0.0', ...)."""
  if not re.fullmatch(r"[a-z0-9_]+(/[\w.=,-]+)?(:[\d.*]+)?", name):
    return False  # Also rules out namespaced (community) names, which need the network.
  try:
    tfds.builder_cls(re.split(r"[/:]", name, maxsplit=1)[0])
  except Exception:  # pylint: disable=broad-except  (DatasetNotFoundError and kin)
    return False
  return True


def get_source(dataset: str) -> Source:
  """The source for a dataset name; ValueError listing the choices if there is none."""
  if not isinstance(dataset, str) or not dataset:
    raise ValueError(f"dataset must be a non-empty name, got {dataset!r}")
  if dataset.startswith(FOLDER_PREFIX):
    from datasets import folder  # pylint: disable=g-import-not-at-top
    return folder.FolderSource(dataset[len(FOLDER_PREFIX):])
  if dataset in DATASETS:
    return DATASETS.get(dataset)
  if _tfds_knows(dataset):
    return TfdsSource(dataset)
  raise ValueError(
      f"unknown dataset {dataset!r}; valid choices: {', '.join(DATASETS.names())}; "
      f"'{FOLDER_PREFIX}<root>' for an image folder <root>/<split>/<class>/*.png|jpg|jpeg; "
      "or any other dataset name TFDS knows (tfds.list_builders())")
