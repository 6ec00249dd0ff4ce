"""Pooled per-layer features of a frozen representation: one pass over a split, optionally cached.

The fast path of the evaluation: with deterministic preprocessing every example has one feature
vector per layer, so a split goes through the backbone once and the heads train on the arrays.

Disk cache layout (`feature_cache_dir`): one folder per (representation, dataset, split,
preprocessing, pooling) combination, named by a hash of those (`cache_key`):
  <feature_cache_dir>/<key>/meta.json    what the key was made of, layers, dims, dtype, count
  <feature_cache_dir>/<key>/labels.npy   int32 [N]
  <feature_cache_dir>/<key>/<layer>.npy  float32 or float16 [N, D] per layer
A folder is written under a temporary name and renamed when complete, so a present folder is whole.
For an export, the key includes its absolute path and the modification times of its files, so
re-exporting invalidates the cache; for the random-init baseline, the architecture and seed.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

import datasets
from eval import pooling
from eval.representation import Representation

CACHE_FORMAT_VERSION = 1
FEATURE_DTYPES = ("float32", "float16")


@dataclasses.dataclass
class FeatureSet:
  """Per-layer feature arrays `[N, D]` (in depth order) and int32 labels `[N]`."""
  features: Dict[str, np.ndarray]
  labels: np.ndarray

  @property
  def num_examples(self) -> int:
    return int(self.labels.shape[0])

  @property
  def dims(self) -> Dict[str, int]:
    return {name: int(array.shape[1]) for name, array in self.features.items()}

  def subset(self, indices: np.ndarray) -> "FeatureSet":
    return FeatureSet({name: array[indices] for name, array in self.features.items()},
                      self.labels[indices])


class FeatureExtractor:
  """Images -> {layer: pooled features `[B, D]`} through the frozen representation.

  Callable eagerly or inside another tf.function. On the first call (or `build`) it runs the
  representation once on a zero image to learn each end point's static shape (so that exports
  traced with unknown spatial sizes still pool) and the pooled dimensions (`feature_dims`).
  """

  def __init__(self, representation: Representation, pool_mode: str = "adaptive_max",
               combine_patches: str = "avg_pool",
               max_features: int = pooling.DEFAULT_MAX_FEATURES):
    if pool_mode not in pooling.POOL_MODES:
      raise ValueError(f"unknown pool_mode {pool_mode!r}; valid choices: "
                       f"{', '.join(pooling.POOL_MODES)}")
    pooling.COMBINE_MODES.get(combine_patches)  # Validates the name.
    if max_features < 1:
      raise ValueError(f"max_features must be positive, got {max_features}")
    self.representation = representation
    self.layers = list(representation.layers)
    self.pool_mode = pool_mode
    self.combine_patches = combine_patches
    self.max_features = max_features
    self.end_point_shapes: Optional[Dict[str, List[int]]] = None
    self.feature_dims: Optional[Dict[str, int]] = None
    self._fn = None  # The compiled _features, made by build.

  def build(self, example_shape: Sequence[int]):
    """Learns the shapes from one example of shape [H,W,C] (or [P,H,W,C] for patches)."""
    example_shape = [int(d) for d in example_shape]
    if len(example_shape) not in (3, 4):
      raise ValueError(f"an example must be [H,W,C] or [P,H,W,C]; got {example_shape}")
    with tf.init_scope():
      probe = self.representation.fn(tf.zeros([1] + example_shape[-3:], tf.float32))
      missing = [name for name in self.layers if name not in probe]
      if missing:
        raise ValueError(f"the representation does not return layers {missing}; "
                         f"it returns {sorted(probe)}")
      self.end_point_shapes = {name: probe[name].shape.as_list()[1:] for name in self.layers}
      features = self._features(tf.zeros([1] + example_shape, tf.float32))
      self.feature_dims = {name: int(features[name].shape[-1]) for name in self.layers}
    # One trace for every batch size (a split's last, smaller batch included).
    self._fn = tf.function(self._features, input_signature=[
        tf.TensorSpec([None] + example_shape, tf.float32)])

  def _end_points(self, images):
    out = self.representation.fn(images)
    return {name: tf.ensure_shape(out[name], [None] + self.end_point_shapes[name])
            for name in self.layers}

  def _features(self, images):
    return pooling.pooled_features(self._end_points, images, self.layers, self.pool_mode,
                                   self.combine_patches, self.max_features)

  def __call__(self, images) -> Dict[str, tf.Tensor]:
    images = tf.convert_to_tensor(images, tf.float32)
    if self._fn is None:
      self.build(images.shape[1:])
    return self._fn(images)


def extract_features(extractor: FeatureExtractor, batches: Iterable[Mapping[str, Any]],
                     dtype: str = "float32", num_examples: Optional[int] = None,
                     description: str = "", log_every_s: float = 30.0) -> FeatureSet:
  """One pass over `batches` (dicts with `image` and `label`) -> a FeatureSet in memory.

  With `num_examples`, each layer's batches are copied into one array of that many rows made
  at the first batch (no second copy to join them; a split that turns out longer has its extra
  batches joined on at the end, a shorter one is cut)."""
  if dtype not in FEATURE_DTYPES:
    raise ValueError(f"unknown feature dtype {dtype!r}; valid choices: {', '.join(FEATURE_DTYPES)}")
  tables: Dict[str, np.ndarray] = {}
  chunks: Dict[str, List[np.ndarray]] = {name: [] for name in extractor.layers}
  labels: List[np.ndarray] = []
  start = last_log = time.time()
  count = in_tables = 0  # Examples seen; of them, those in `tables`.
  for batch in batches:
    features = extractor(batch["image"])
    labels.append(datasets.image_labels(np.asarray(batch["label"])).astype(np.int32))
    if count == 0 and num_examples:
      logging.info("features %s: %d examples will take %.2f GB in memory", description,
                   num_examples, estimated_bytes(num_examples, extractor.feature_dims, dtype) / 1e9)
      tables = {name: np.empty([num_examples, dim], dtype)
                for name, dim in extractor.feature_dims.items()}
    size = len(labels[-1])
    fits = in_tables == count and count + size <= (num_examples or 0)
    for name in extractor.layers:
      if fits:
        tables[name][count:count + size] = features[name].numpy()
      else:
        chunks[name].append(features[name].numpy().astype(dtype, copy=False))
    in_tables += size if fits else 0
    count += size
    now = time.time()
    if now - last_log >= log_every_s:
      last_log = now
      total = f"/{num_examples}" if num_examples else ""
      logging.info("features %s: %d%s examples, %.1f examples/s", description, count, total,
                   count / (now - start))
  if not labels:
    raise ValueError(f"no batches to extract features from ({description or 'empty dataset'})")
  features = {}
  for name in extractor.layers:
    filled = [tables[name][:in_tables]] if in_tables else []
    parts = filled + chunks.pop(name)
    features[name] = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
  elapsed = time.time() - start
  logging.info("features %s: %d examples in %.1fs (%.1f examples/s), dims %s", description, count,
               elapsed, count / max(elapsed, 1e-9), {k: v.shape[1] for k, v in features.items()})
  return FeatureSet(features, np.concatenate(labels))


def cache_key(parts: Mapping[str, Any]) -> str:
  """A short hash of what determines the features (JSON of `parts`, keys sorted)."""
  text = json.dumps(dict(parts, cache_format=CACHE_FORMAT_VERSION), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:20]


def _layer_file(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".npy"


def load_cached(cache_dir: str, key: str, layers: Sequence[str]) -> Optional[FeatureSet]:
  """The cached FeatureSet for `key` if present and complete for `layers`, else None."""
  folder = os.path.join(cache_dir, key)
  meta_path = os.path.join(folder, "meta.json")
  if not os.path.exists(meta_path):
    return None
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    if any(name not in meta["files"] for name in layers):
      logging.info("feature cache %s lacks some of the layers %s; recomputing", folder, layers)
      return None
    labels = np.load(os.path.join(folder, "labels.npy"))
    features = {name: np.load(os.path.join(folder, meta["files"][name])) for name in layers}
  except (OSError, ValueError, KeyError) as e:
    logging.warning("ignoring unreadable feature cache %s: %s", folder, e)
    return None
  if any(array.shape[0] != labels.shape[0] for array in features.values()):
    logging.warning("ignoring inconsistent feature cache %s", folder)
    return None
  logging.info("loaded cached features %s (%d examples)", folder, labels.shape[0])
  return FeatureSet(features, labels)


def save_cached(cache_dir: str, key: str, feature_set: FeatureSet, parts: Mapping[str, Any]):
  """Writes `feature_set` under `cache_dir/key`, atomically (temporary folder, then rename)."""
  os.makedirs(cache_dir, exist_ok=True)
  folder = os.path.join(cache_dir, key)
  tmp = tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=cache_dir)
  try:
    files = {}
    for name, array in feature_set.features.items():
      files[name] = _layer_file(name)
      np.save(os.path.join(tmp, files[name]), array)
    np.save(os.path.join(tmp, "labels.npy"), feature_set.labels)
    meta = dict(key=key, parts=dict(parts), files=files, dims=feature_set.dims,
                num_examples=feature_set.num_examples,
                dtype=str(next(iter(feature_set.features.values())).dtype),
                cache_format=CACHE_FORMAT_VERSION)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2, sort_keys=True, default=str)
    if os.path.exists(folder):
      shutil.rmtree(folder)
    os.replace(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("saved features to %s", folder)


def extract_or_load(extractor: FeatureExtractor, make_batches, cache_dir: Optional[str],
                    parts: Mapping[str, Any], dtype: str = "float32",
                    num_examples: Optional[int] = None, description: str = "") -> FeatureSet:
  """Features from the cache when there, else extracted from `make_batches()` (and cached)."""
  key = None
  if cache_dir:
    parts = dict(parts, pool_mode=extractor.pool_mode, combine_patches=extractor.combine_patches,
                 max_features=extractor.max_features, dtype=dtype, layers=list(extractor.layers))
    key = cache_key(parts)
    cached = load_cached(cache_dir, key, extractor.layers)
    if cached is not None:
      return cached
  feature_set = extract_features(extractor, make_batches(), dtype=dtype,
                                 num_examples=num_examples, description=description)
  if cache_dir:
    save_cached(cache_dir, key, feature_set, parts)
  return feature_set


def estimated_bytes(num_examples: int, dims: Mapping[str, int], dtype: str = "float32") -> int:
  """Memory taken by the features of `num_examples` examples."""
  return num_examples * sum(dims.values()) * np.dtype(dtype).itemsize
