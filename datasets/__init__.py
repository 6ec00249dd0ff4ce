"""Input pipelines: dataset name + split + preprocessing -> batched `tf.data.Dataset`.

    ds = get_data("cifar10", "train[:90%]", is_training=True, batch_size=128,
                  preprocess_fn=get_preprocess_fn("crop,flip_lr", True, config))

Batches are dicts: `image` float32 `[B,H,W,C]` (or `[B,P,H,W,C]` after an op that
stacks P copies/patches), `label` int32 `[B]` (or `[B,P]`), plus any keys ops add.
Dataset names: see datasets/sources.py (`DATASETS`, `folder:<root>`, TFDS names);
preprocessing ops: datasets/preprocess.py (`PREPROCESS_OPS`).
"""

from typing import Callable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from datasets import copies  # pylint: disable=unused-import  (registers its ops)
from datasets import dense_targets  # pylint: disable=unused-import  (registers its ops)
from datasets.base import DatasetInfo, DatasetNotPreparedError
from datasets.preprocess import (LOCAL_VIEWS, PREPROCESS_OPS, PreprocessConfig, as_hw,
                                 get_preprocess_fn, register_op, validate_spec)
from datasets.sources import DATASETS, get_source

__all__ = [
    "get_data", "get_dataset_info", "get_num_examples", "get_preprocess_fn", "validate_spec",
    "image_labels", "split_classes", "split_labels",
    "register_op", "PreprocessConfig", "DatasetInfo", "DatasetNotPreparedError", "DATASETS",
    "PREPROCESS_OPS", "LOCAL_VIEWS", "as_hw",
]


def get_dataset_info(dataset: str, data_dir: Optional[str] = None) -> DatasetInfo:
  """Classes, splits and sizes of a dataset (prepares the embedded one if needed)."""
  return get_source(dataset).info(data_dir)


def get_num_examples(dataset: str, split: str, data_dir: Optional[str] = None) -> int:
  """Examples in `split`: a split name or a TFDS slice like 'train[:90%]' or 'train[:1000]'."""
  return get_source(dataset).num_examples(split, data_dir)


def split_classes(dataset: str, split: str, data_dir: Optional[str] = None
                  ) -> Optional[List[str]]:
  """The classes `split` holds examples of, where known without reading it (image folders);
  None elsewhere."""
  return get_source(dataset).split_classes(split, data_dir)


def split_labels(dataset: str, split: str, data_dir: Optional[str] = None) -> np.ndarray:
  """The labels of `split`'s examples in its stored order, the positions that `get_data`'s
  `indices` refer to; read without reading an image where the storage allows (TFRecord
  files: datasets/records.py)."""
  return get_source(dataset).labels(split, data_dir)


def image_labels(labels):
  """The per-image labels `[B]` of a batch's labels: labels repeated per patch or copy
  `[B, P]` give their first column. NumPy arrays or tensors."""
  if len(labels.shape) == 2:
    return labels[:, 0]
  if len(labels.shape) != 1:
    raise ValueError(f"labels must be [B] or [B, P], got shape {labels.shape}")
  return labels


def _to_float_rgb(image: tf.Tensor) -> tf.Tensor:
  """uint8 [H,W,C] -> float32 [H,W,3] in [0, 1]."""
  image = tf.image.convert_image_dtype(image, tf.float32)
  channels = image.shape[-1]
  if channels == 1:
    return tf.image.grayscale_to_rgb(image)
  if channels == 4:
    return image[..., :3]
  if channels is None:
    image = tf.cond(tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]),
                    lambda: image[..., :3])
    return tf.ensure_shape(image, [None, None, 3])
  return image


def get_data(dataset: str, split: str, *, is_training: bool,
             preprocess_fn: Optional[Callable[[dict], dict]], batch_size: int,
             data_dir: Optional[str] = None, shuffle_buffer: int = 10_000,
             seed: Optional[int] = 0, drop_remainder: Optional[bool] = None,
             repeat: Optional[bool] = None, num_parallel_calls=tf.data.AUTOTUNE,
             input_context: Optional[tf.distribute.InputContext] = None,
             indices: Optional[Sequence[int]] = None) -> tf.data.Dataset:
  """Batches of preprocessed examples of one split.

  In training, files and examples are shuffled (with `seed`) and the data repeats
  (`repeat` defaults to `is_training`); `drop_remainder` defaults to `is_training`.
  With an `input_context` of several input pipelines, each reads a disjoint part of
  the split and `batch_size` is the per-replica batch. `indices`: only the examples at these
  positions of the split in its stored order (the order of an evaluation pass), e.g. a
  labelled subset; only those records are read (TFRecord files, image folders), in that order,
  and in training shuffled.
  """
  if not isinstance(batch_size, int) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  repeat = is_training if repeat is None else repeat
  drop_remainder = is_training if drop_remainder is None else drop_remainder
  source = get_source(dataset)
  shard = None
  if input_context is not None and input_context.num_input_pipelines > 1:
    shard = (input_context.num_input_pipelines, input_context.input_pipeline_id)
  size = source.num_examples(split, data_dir)
  if size == 0:
    raise ValueError(f"dataset {dataset!r} split {split!r} has no examples")

  if indices is not None:
    if shard is not None:
      raise ValueError("indices (a subset of the split) cannot be combined with several input "
                       "pipelines")
    indices = np.unique(np.asarray(indices, np.int64))
    if len(indices) and (indices[0] < 0 or indices[-1] >= size):
      raise ValueError(f"indices must be positions 0 .. {size - 1} of dataset {dataset!r} "
                       f"split {split!r}; got {indices[0]} .. {indices[-1]}")
  raw = source.read(split, data_dir=data_dir, shuffle_files=is_training and indices is None,
                    seed=seed, shard=shard, indices=indices)
  ds = raw.records
  if is_training and shuffle_buffer > 1:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()

  def process(example, preprocess):
    if preprocess is not None:
      example = preprocess(example)
    if example["label"].dtype != tf.int32:
      example = {**example, "label": tf.cast(example["label"], tf.int32)}
    return example

  from_jpeg = getattr(preprocess_fn, "from_jpeg", None)
  if raw.jpeg and from_jpeg is not None:  # Decoding only the region the crop keeps.
    ds = ds.map(lambda record: process(
        {"image": record["image"], "label": tf.cast(record["label"], tf.int32)}, from_jpeg),
                num_parallel_calls=num_parallel_calls)
  else:
    ds = raw.decode(ds, num_parallel_calls)
    ds = ds.map(lambda example: process(
        {"image": _to_float_rgb(example["image"]), "label": tf.cast(example["label"], tf.int32)},
        preprocess_fn), num_parallel_calls=num_parallel_calls)
  shape = ds.element_spec["image"].shape
  if shape.rank is None or None in shape.as_list()[-3:-1]:
    raise ValueError(
        f"preprocessing yields images of shape {shape} for dataset {dataset!r}; batching needs "
        "one fixed size: end the spec with an op that fixes it (resize, crop, central_crop, "
        "inception_crop, inception_preprocess)")
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  options = tf.data.Options()
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.map_fusion = True
  options.deterministic = seed is not None or not is_training
  ds = ds.with_options(options)
  return ds.prefetch(tf.data.AUTOTUNE)
