"""Pooling of end points down to a feature budget, and combining features across patches.

An end point `[B, h, w, C]` with more than `max_features` (default 9000) values per example is
pooled to a grid `[B, h', w', C]` with `h' * w' * C <= max_features`, then flattened (row-major:
h', w', C).
End points within the budget, and vectors `[B, D]`, are only flattened.

Pool modes (`POOL_MODES`):
  adaptive_max, adaptive_avg: the grid is the largest one that keeps the map's aspect ratio
    (see `adaptive_grid`); output cell i covers input rows [floor(i*h/h'), ceil((i+1)*h/h')) (and
    likewise columns), as in adaptive pooling: cells may overlap by one row when h' does not
    divide h.
  max, avg: plain pooling with a square kernel k = stride k, the smallest k for which
    ceil(h/k) * ceil(w/k) * C fits the budget; the last cell of a row/column is partial when k does
    not divide the size (it covers what is left, no padding values enter the max or the mean).

A map with C > max_features cannot be brought within the budget by spatial pooling: it is pooled
globally (1x1) to C features, the most sensible reduction that keeps every channel.

Tokens `[B, 1 + N, D]` (a transformer's blocks: the class token first, then N patch tokens) are
reduced by `token_pooling` (`TOKEN_POOLINGS`): `cls`, the class token (D features); `mean`, the
mean of the patch tokens (D); `cls_mean`, both concatenated (2D, the default: a linear probe can
weigh either). DINO probes class tokens, MAE's users both; the results record which.
"""

import math
from typing import Callable, Dict, List, Sequence, Tuple

import tensorflow as tf

from core import options
from core.registry import Registry

DEFAULT_MAX_FEATURES = 9000
POOL_MODES = options.POOL_MODES  # The --pool_mode choices.
TOKEN_POOLINGS = options.TOKEN_POOLINGS  # The --token_pooling choices.
DEFAULT_TOKEN_POOLING = "cls_mean"
COMBINE_MODES = Registry("combine_patches mode")

Bins = List[Tuple[int, int]]


def adaptive_grid(h: int, w: int, c: int,
                  max_features: int = DEFAULT_MAX_FEATURES) -> Tuple[int, int]:
  """The output grid (h', w') of adaptive pooling for a `[h, w, c]` map.

  The map itself when `h*w*c <= max_features`. Otherwise the grid
  (h', w') = (floor(s*h), floor(s*w)) (each at least 1) for the scale s in (0, 1] that gives the
  most features `h'*w'*c` within the budget; ties go to the larger h'. So a square map gets a
  square grid h' = w' = floor(sqrt(max_features / c)), and non-square maps keep their aspect ratio
  as closely as integer sizes allow: both axes are pooled by the same factor, rather than squeezing
  out a few more features with a grid that pools one axis more than the other (e.g. 14x14x256:
  5x5, not 5x7). `c > max_features` gives (1, 1).
  """
  _check_positive(h=h, w=w, c=c, max_features=max_features)
  if h * w * c <= max_features:
    return h, w
  # The grid only changes at s = k/h or s = k/w: enumerate those breakpoints, in integers.
  candidates = {(k, max(1, k * w // h)) for k in range(1, h + 1)}
  candidates |= {(max(1, k * h // w), k) for k in range(1, w + 1)}
  feasible = [(gh, gw) for gh, gw in candidates if gh * gw * c <= max_features]
  if not feasible:
    return 1, 1
  return max(feasible, key=lambda g: (g[0] * g[1], g[0], g[1]))


def plain_pool_size(h: int, w: int, c: int, max_features: int = DEFAULT_MAX_FEATURES) -> int:
  """Kernel = stride of plain `max`/`avg` pooling: the smallest k whose output fits the budget."""
  _check_positive(h=h, w=w, c=c, max_features=max_features)
  for k in range(1, max(h, w) + 1):
    if math.ceil(h / k) * math.ceil(w / k) * c <= max_features:
      return k
  return max(h, w)  # c > max_features: one cell, global pooling.


def adaptive_bins(size: int, out: int) -> Bins:
  """Cells of adaptive pooling along one axis: [floor(i*size/out), ceil((i+1)*size/out))."""
  return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def plain_bins(size: int, k: int) -> Bins:
  """Cells of pooling with kernel = stride = k along one axis, the last one possibly partial."""
  return [(start, min(start + k, size)) for start in range(0, size, k)]


def pool_bins(x: tf.Tensor, row_bins: Bins, col_bins: Bins, reduce: str) -> tf.Tensor:
  """Max or mean of `x` `[B, h, w, C]` over each (row cell x column cell): `[B, h', w', C]`.

  Separable: reduces over rows, then over columns (exact for max, and for the mean since every
  cell is a rectangle).
  """
  reduce_fn = {"max": tf.reduce_max, "avg": tf.reduce_mean}[reduce]
  if len(row_bins) != x.shape[1]:
    x = tf.stack([reduce_fn(x[:, a:b], axis=1) for a, b in row_bins], axis=1)
  if len(col_bins) != x.shape[2]:
    x = tf.stack([reduce_fn(x[:, :, a:b], axis=2) for a, b in col_bins], axis=2)
  return x


def pool_tokens(x: tf.Tensor, token_pooling: str) -> tf.Tensor:
  """Tokens `[B, 1 + N, D]` (class token first) -> `[B, D]` or `[B, 2D]` by `token_pooling`."""
  if token_pooling not in TOKEN_POOLINGS:
    raise ValueError(f"unknown token_pooling {token_pooling!r}; valid choices: "
                     f"{', '.join(TOKEN_POOLINGS)}")
  parts = []
  if token_pooling in ("cls", "cls_mean"):
    parts.append(x[:, 0])
  if token_pooling in ("mean", "cls_mean"):
    parts.append(tf.reduce_mean(x[:, 1:], axis=1))
  return tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]


def pool_end_point(x: tf.Tensor, pool_mode: str = "adaptive_max",
                   max_features: int = DEFAULT_MAX_FEATURES,
                   token_pooling: str = DEFAULT_TOKEN_POOLING) -> tf.Tensor:
  """One end point (`[B, h, w, C]` with static h, w, C, tokens `[B, 1 + N, D]`, or `[B, D]`)
  -> `[B, D']` features."""
  if pool_mode not in POOL_MODES:
    raise ValueError(f"unknown pool_mode {pool_mode!r}; valid choices: {', '.join(POOL_MODES)}")
  x = tf.convert_to_tensor(x)
  if x.dtype != tf.float32:
    x = tf.cast(x, tf.float32)
  if x.shape.rank == 2:
    return x
  if x.shape.rank == 3:
    return pool_tokens(x, token_pooling)
  if x.shape.rank != 4:
    raise ValueError(f"end points must be [B, h, w, C], tokens [B, T, D] or [B, D]; got shape "
                     f"{x.shape}")
  h, w, c = x.shape[1:]
  if None in (h, w, c):
    raise ValueError(f"pooling needs static spatial and channel sizes; got shape {x.shape}")
  if h * w * c > max_features:
    reduce = "max" if pool_mode.endswith("max") else "avg"
    if pool_mode.startswith("adaptive"):
      gh, gw = adaptive_grid(h, w, c, max_features)
      rows, cols = adaptive_bins(h, gh), adaptive_bins(w, gw)
    else:
      k = plain_pool_size(h, w, c, max_features)
      rows, cols = plain_bins(h, k), plain_bins(w, k)
    x = pool_bins(x, rows, cols, reduce)
  return tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])


def pooled_shape(shape: Sequence[int], pool_mode: str = "adaptive_max",
                 max_features: int = DEFAULT_MAX_FEATURES,
                 token_pooling: str = DEFAULT_TOKEN_POOLING) -> int:
  """Feature dimension after `pool_end_point` of an end point of per-example shape `shape`."""
  if len(shape) == 1:
    return int(shape[0])
  if len(shape) == 2:  # Tokens.
    return int(shape[1]) * (2 if token_pooling == "cls_mean" else 1)
  h, w, c = shape
  if h * w * c <= max_features:
    return h * w * c
  if pool_mode.startswith("adaptive"):
    gh, gw = adaptive_grid(h, w, c, max_features)
  else:
    k = plain_pool_size(h, w, c, max_features)
    gh, gw = math.ceil(h / k), math.ceil(w / k)
  return gh * gw * c


@COMBINE_MODES.register("avg_pool")
def _combine_avg(x: tf.Tensor) -> tf.Tensor:
  return tf.reduce_mean(x, axis=1)


@COMBINE_MODES.register("max_pool")
def _combine_max(x: tf.Tensor) -> tf.Tensor:
  return tf.reduce_max(x, axis=1)


@COMBINE_MODES.register("concat")
def _combine_concat(x: tf.Tensor) -> tf.Tensor:
  return tf.reshape(x, [-1, x.shape[1] * x.shape[2]])


def patch_budget(max_features: int, num_patches: int, combine_patches: str) -> int:
  """Per-patch feature budget: split across the patches for `concat`, whole otherwise."""
  if combine_patches == "concat":
    return max(1, max_features // num_patches)
  return max_features


def pooled_features(representation_fn: Callable[[tf.Tensor], Dict[str, tf.Tensor]],
                    images: tf.Tensor, layers: Sequence[str], pool_mode: str = "adaptive_max",
                    combine_patches: str = "avg_pool",
                    max_features: int = DEFAULT_MAX_FEATURES,
                    token_pooling: str = DEFAULT_TOKEN_POOLING) -> Dict[str, tf.Tensor]:
  """Images `[B,H,W,C]` or patches `[B,P,H,W,C]` -> {layer: `[B, D]`} pooled, combined features.

  Patches go through the representation as one batch of B*P images; each layer is pooled per
  patch and then combined across the P patches with `combine_patches` (`avg_pool`, `max_pool`, or
  `concat`, which gives each patch max_features // P of the budget).
  """
  combine = COMBINE_MODES.get(combine_patches)
  images = tf.convert_to_tensor(images)
  if images.shape.rank == 4:
    end_points = representation_fn(images)
    return {name: pool_end_point(end_points[name], pool_mode, max_features, token_pooling)
            for name in layers}
  if images.shape.rank != 5:
    raise ValueError(f"images must be [B,H,W,C] or [B,P,H,W,C]; got shape {images.shape}")
  num_patches = images.shape[1]
  if num_patches is None:
    raise ValueError(f"the number of patches must be static; got shape {images.shape}")
  flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], axis=0))
  flat.set_shape([None] + images.shape[2:].as_list())
  end_points = representation_fn(flat)
  budget = patch_budget(max_features, num_patches, combine_patches)
  out = {}
  for name in layers:
    pooled = pool_end_point(end_points[name], pool_mode, budget, token_pooling)
    pooled = tf.reshape(pooled, [-1, num_patches, pooled.shape[-1]])
    out[name] = combine(pooled)
  return out


def _check_positive(**values):
  for name, value in values.items():
    if value is None or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}")
