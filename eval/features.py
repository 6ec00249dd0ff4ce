"""Pooled per-layer features of a frozen representation: one pass over a split into a store.

The fast path of the evaluation: with deterministic preprocessing every example has one feature
vector per layer, so a split goes through the backbone once and the heads train on the stored
rows. The store (eval/store.py) is a folder (`feature_cache_dir`, or the workdir's
feature_cache/: one folder per key, a hash of the representation's fingerprint, dataset, split,
preprocessing, pooling, layers, feature limit and dtype), written as extraction goes and
resumed after an interruption, or, with `--feature_cache=memory`, tables in memory.
"""

import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

import datasets
from eval import pooling
from eval import store as store_lib
from eval.representation import Representation


class FeatureExtractor:
  """Images -> {layer: pooled features `[B, D]`} through the frozen representation.

  Callable eagerly or inside another tf.function. On the first call (or `build`) it runs the
  representation once on a zero image to learn each end point's static shape (so that exports
  traced with unknown spatial sizes still pool) and the pooled dimensions (`feature_dims`).
  """

  def __init__(self, representation: Representation, pool_mode: str = "adaptive_max",
               combine_patches: str = "avg_pool",
               max_features: int = pooling.DEFAULT_MAX_FEATURES,
               token_pooling: str = pooling.DEFAULT_TOKEN_POOLING):
    if pool_mode not in pooling.POOL_MODES:
      raise ValueError(f"unknown pool_mode {pool_mode!r}; valid choices: "
                       f"{', '.join(pooling.POOL_MODES)}")
    if token_pooling not in pooling.TOKEN_POOLINGS:
      raise ValueError(f"unknown token_pooling {token_pooling!r}; valid choices: "
                       f"{', '.join(pooling.TOKEN_POOLINGS)}")
    pooling.COMBINE_MODES.get(combine_patches)  # Validates the name.
    if max_features < 1:
      raise ValueError(f"max_features must be positive, got {max_features}")
    self.representation = representation
    self.layers = list(representation.layers)
    self.pool_mode = pool_mode
    self.combine_patches = combine_patches
    self.max_features = max_features
    self.token_pooling = token_pooling
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
                                   self.combine_patches, self.max_features, self.token_pooling)

  def __call__(self, images) -> Dict[str, tf.Tensor]:
    images = tf.convert_to_tensor(images, tf.float32)
    if self._fn is None:
      self.build(images.shape[1:])
    return self._fn(images)


def _token_part(extractor: FeatureExtractor) -> Dict[str, str]:
  """The token pooling in a cache key where it is not the default (which keys made before it
  existed have: only tokens, which no earlier backbone had, depend on it)."""
  if extractor.token_pooling == pooling.DEFAULT_TOKEN_POOLING:
    return {}
  return {"token_pooling": extractor.token_pooling}


def extract(extractor: FeatureExtractor, make_batches: Callable[[int], Iterable[Mapping[str, Any]]],
            cache_dir: Optional[str], parts: Mapping[str, Any], dtype: str = "float32",
            num_examples: Optional[int] = None, description: str = "",
            log_every_s: float = 30.0) -> store_lib.Store:
  """The store of a split's features: its folder under `cache_dir` (eval/store.py, named by
  the key of `parts` and the extractor's settings) when there and complete, else extracted from
  `make_batches(start)` (dicts with `image` and `label`, from the split's row `start` on: an
  interrupted extraction into that folder goes on from its last committed row); `cache_dir`
  None: in memory."""
  parts = dict(parts, pool_mode=extractor.pool_mode, combine_patches=extractor.combine_patches,
               max_features=extractor.max_features, dtype=dtype, layers=list(extractor.layers),
               **_token_part(extractor))
  folder = os.path.join(cache_dir, store_lib.cache_key(parts)) if cache_dir else None
  if folder:
    found = store_lib.open_store(folder, extractor.layers)
    if found is not None:
      return found
  writer = store_lib.Writer(folder, parts, dtype, num_examples or 0)
  first = writer.rows
  if num_examples and extractor.feature_dims:
    logging.info("features %s: %d examples, %.2f GB", description, num_examples,
                 estimated_bytes(num_examples, extractor.feature_dims, dtype) / 1e9)
  start = last_log = time.time()
  try:
    for batch in make_batches(first):
      features = extractor(batch["image"])
      writer.write({name: features[name].numpy() for name in extractor.layers},
                   datasets.image_labels(np.asarray(batch["label"])))
      now = time.time()
      if now - last_log >= log_every_s:
        last_log = now
        total = f"/{num_examples}" if num_examples else ""
        logging.info("features %s: %d%s examples, %.1f examples/s", description, writer.rows,
                     total, (writer.rows - first) / (now - start))
    if writer.dims is None or not writer.rows:
      raise ValueError(f"no batches to extract features from ({description or 'empty dataset'})")
    result = writer.finish()
  finally:
    writer.close()
  elapsed = time.time() - start
  logging.info("features %s: %d examples in %.1fs (%.1f examples/s), dims %s%s", description,
               result.num_examples, elapsed, (result.num_examples - first) / max(elapsed, 1e-9),
               result.dims, f", in {folder}" if folder else "")
  return result


def estimated_bytes(num_examples: int, dims: Mapping[str, int], dtype: str = "float32") -> int:
  """Memory taken by the features of `num_examples` examples."""
  return num_examples * sum(dims.values()) * np.dtype(dtype).itemsize
