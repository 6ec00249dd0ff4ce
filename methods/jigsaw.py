"""Jigsaw puzzles (Noroozi & Favaro 2016): which permutation of the patches was applied?

Each image comes as P = splits_per_side^2 patches [B,P,h,w,C] (`crop_patches`). The backbone
embeds every patch; for a permutation k the P embeddings are put in the shuffled order
(position i holds patch perms[k,i]), concatenated, and the head (methods/patch_utils.py)
classifies k among `num_permutations` classes. In training, `perm_subset_size` permutations are
drawn per batch (the same ones for every image of the batch, as in the 2019 code) and every image
is shown in all of them; in evaluation every image is shown in all the permutations.

The permutation set is generated, not downloaded: greedy selection of permutations maximising
the average Hamming distance to those already chosen (Noroozi & Favaro's "maximal" set), from a
fixed seed (`generate_permutations`), cached on disk (`load_permutations`).
"""

import functools
import itertools
import math
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from core.errors import ConfigError
from methods import base
from methods import patch_utils

PERMUTATION_SEED = 0
# Above this many candidates (P! > MAX_CANDIDATES, i.e. P > 9) the candidates are a random
# sample of MAX_CANDIDATES permutations instead of all P! of them.
MAX_CANDIDATES = 400_000
_CACHE_VERSION = 1


def generate_permutations(num: int, size: int = 9, seed: int = PERMUTATION_SEED,
                          max_candidates: int = MAX_CANDIDATES) -> np.ndarray:
  """`num` distinct permutations of range(size) [num, size], greedily spread in Hamming distance.

  Candidates: all size! permutations when size! <= max_candidates (9! = 362,880), else
  max_candidates distinct random ones; both in an order shuffled by `seed`. The first candidate
  starts the set; each next one is the candidate with the largest sum (equivalently average) of
  Hamming distances to the permutations already chosen; among equal sums, the one farthest from
  its nearest chosen permutation; then the earliest candidate.
  Deterministic given its arguments; about a second for 100 of 9.
  """
  if size < 2:
    raise ValueError(f"permutations need at least 2 elements, got size={size}")
  rng = np.random.default_rng(seed)
  if math.factorial(size) <= max_candidates:
    candidates = np.array(list(itertools.permutations(range(size))), dtype=np.int8)
  else:
    candidates = rng.permuted(np.tile(np.arange(size, dtype=np.int8), (max_candidates, 1)),
                              axis=1)
    candidates = np.unique(candidates, axis=0)
  candidates = candidates[rng.permutation(len(candidates))]
  if not 1 <= num <= len(candidates):
    raise ValueError(f"num_permutations={num} must be in [1, {len(candidates)}] for "
                     f"{size} patches")
  chosen = [0]
  available = np.ones(len(candidates), bool)
  available[0] = False
  total = np.sum(candidates != candidates[0], axis=1, dtype=np.int64)
  nearest = total.copy()
  for _ in range(num - 1):
    # Lexicographic: the sum of distances first, then the distance to the nearest chosen one.
    score = np.where(available, total * (size + 1) + nearest, -1)
    best = int(np.argmax(score))
    chosen.append(best)
    available[best] = False
    distance = np.sum(candidates != candidates[best], axis=1, dtype=np.int64)
    total += distance
    np.minimum(nearest, distance, out=nearest)
  return candidates[chosen].astype(np.int32)


def check_permutations(perms: np.ndarray, num: int, size: int) -> None:
  """ValueError unless `perms` holds `num` distinct permutations of range(size)."""
  perms = np.asarray(perms)
  if perms.shape != (num, size):
    raise ValueError(f"expected permutations of shape {(num, size)}, got {perms.shape}")
  if not np.array_equal(np.sort(perms, axis=1), np.tile(np.arange(size), (num, 1))):
    raise ValueError("not every row is a permutation of range(size)")
  if len(np.unique(perms, axis=0)) != num:
    raise ValueError("the permutations are not distinct")


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/ssl_bench/jigsaw, or ~/.cache/ssl_bench/jigsaw."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "ssl_bench", "jigsaw")


def load_permutations(num: int, size: int = 9, cache_dir: Optional[str] = None) -> np.ndarray:
  """The permutation set of `generate_permutations(num, size)`, from `cache_dir` (default:
  `default_cache_dir()`) when cached there, else generated and cached (written atomically).
  An unwritable cache only costs the regeneration next time."""
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, f"permutations_{num}x{size}_seed{PERMUTATION_SEED}_"
                                 f"v{_CACHE_VERSION}.npy")
  if os.path.exists(path):
    try:
      perms = np.load(path)
      check_permutations(perms, num, size)
      return perms.astype(np.int32)
    except (OSError, ValueError) as e:
      logging.warning("regenerating the jigsaw permutations: ignoring %s (%s)", path, e)
  perms = generate_permutations(num, size)
  try:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, perms)
    os.replace(tmp, path)
  except OSError as e:
    logging.warning("could not cache the jigsaw permutations in %s: %s", cache_dir, e)
  return perms


@functools.lru_cache(maxsize=None)
def _permutations(num: int, size: int) -> np.ndarray:
  perms = load_permutations(num, size)
  perms.setflags(write=False)
  return perms


def validate(config) -> None:
  patch_utils.validate_patch_config(config)
  num_patches = config.splits_per_side ** 2
  if num_patches < 2:
    raise ConfigError(f"--task=jigsaw needs at least 2 patches; got --splits_per_side="
                      f"{config.splits_per_side}")
  limit = min(math.factorial(num_patches), MAX_CANDIDATES)
  if config.num_permutations > limit:
    raise ConfigError(f"--num_permutations={config.num_permutations} is more than the "
                      f"{limit} available for {num_patches} patches")
  if config.perm_subset_size > config.num_permutations:
    raise ConfigError(f"--perm_subset_size={config.perm_subset_size} must be at most "
                      f"--num_permutations={config.num_permutations}")


def build_model(config, image_shape, num_classes):
  del num_classes  # The classes are the permutations.
  return patch_utils.build_patch_model(config, image_shape, "jigsaw",
                                       group_size=config.splits_per_side ** 2,
                                       num_classes=config.num_permutations)


serving_input_shape = base.stacked_serving_input_shape


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  training = mode == base.TRAIN
  end_points, embeddings = patch_utils.embed_patches(model, batch["image"], training)
  num_patches = embeddings.shape[1]
  perms = tf.constant(_permutations(config.num_permutations, num_patches))
  if training:
    labels = tf.random.shuffle(tf.range(config.num_permutations))[:config.perm_subset_size]
  else:
    labels = tf.range(config.num_permutations)
  shuffled = patch_utils.permute_patches(embeddings, tf.gather(perms, labels))  # [B,K,P,D]
  logits = model.head(tf.reshape(shuffled, [-1, num_patches * model.embed_dim]),
                      training=training)
  labels = tf.tile(labels, [tf.shape(embeddings)[0]])
  return base.classification_spec(logits, labels, mode, end_points)
