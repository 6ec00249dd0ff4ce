"""The jigsaw permutation set: generation, caching, and shuffling patches by it (methods/jigsaw.py)."""

import dataclasses
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import jigsaw
from methods import patch_utils


@pytest.fixture(scope="module")
def perms100():
  return jigsaw.generate_permutations(100, 9)


def _hamming(perms):
  d = np.sum(perms[:, None, :] != perms[None, :, :], axis=-1)
  return d[np.triu_indices(len(perms), 1)]


def test_the_default_set_is_100_distinct_permutations_far_apart(perms100):
  jigsaw.check_permutations(perms100, 100, 9)
  assert perms100.dtype == np.int32
  distances = _hamming(perms100)
  print(f"100 permutations of 9: mean pairwise Hamming distance {distances.mean():.3f}, "
        f"min {distances.min()}")
  # Random permutations average 8 (one fixed point expected); 8.08 is the most 100 can average.
  assert distances.mean() >= 8.05
  assert distances.min() >= 3


def test_generation_is_deterministic_and_the_seed_matters(perms100):
  np.testing.assert_array_equal(jigsaw.generate_permutations(100, 9), perms100)
  other = jigsaw.generate_permutations(100, 9, seed=1)
  assert not np.array_equal(other, perms100)


def test_all_permutations_when_asked_for_all():
  perms = jigsaw.generate_permutations(24, 4)
  assert sorted(map(tuple, perms)) == sorted(itertools.permutations(range(4)))
  with pytest.raises(ValueError, match="num_permutations=25 must be in"):
    jigsaw.generate_permutations(25, 4)


def test_sampled_candidates_for_large_grids():
  perms = jigsaw.generate_permutations(20, 16, max_candidates=2000)
  jigsaw.check_permutations(perms, 20, 16)
  assert _hamming(perms).mean() > 15.0  # Random pairs average 15.


def test_load_caches_on_disk(tmp_path, monkeypatch):
  first = jigsaw.load_permutations(10, 9, cache_dir=str(tmp_path))
  files = os.listdir(tmp_path)
  assert len(files) == 1 and files[0].endswith(".npy"), files
  monkeypatch.setattr(jigsaw, "generate_permutations",
                      lambda *a, **k: pytest.fail("regenerated instead of loading the cache"))
  np.testing.assert_array_equal(jigsaw.load_permutations(10, 9, cache_dir=str(tmp_path)), first)


def test_a_corrupt_cache_is_regenerated(tmp_path):
  first = jigsaw.load_permutations(10, 9, cache_dir=str(tmp_path))
  path = os.path.join(tmp_path, os.listdir(tmp_path)[0])
  np.save(path, np.zeros([10, 9], np.int32))
  np.testing.assert_array_equal(jigsaw.load_permutations(10, 9, cache_dir=str(tmp_path)), first)
  jigsaw.check_permutations(np.load(path), 10, 9)


def test_shuffling_by_a_permutation_and_its_inverse_restores_the_order(perms100):
  x = tf.random.normal([3, 9, 4, 4, 2])
  shuffled = patch_utils.permute_patches(x, perms100)                  # [3,100,9,4,4,2]
  assert shuffled.shape == (3, 100, 9, 4, 4, 2)
  k, i = 17, 5
  np.testing.assert_array_equal(shuffled[:, k, i], x[:, perms100[k, i]])
  inverse = patch_utils.inverse_permutations(perms100)
  for k in (0, 17, 99):
    restored = patch_utils.permute_patches(shuffled[:, k], inverse[k:k + 1])[:, 0]
    np.testing.assert_array_equal(restored, x)
    assert not np.array_equal(shuffled[:, k], x) or np.array_equal(perms100[k], np.arange(9))


def _config(**overrides):
  settings = dict(task="jigsaw", workdir="/tmp/unused", preprocessing="crop,crop_patches",
                  crop_size=(48, 48))
  settings.update(overrides)
  return Config(**settings)


def test_validation_names_the_bad_value():
  jigsaw.validate(_config())
  with pytest.raises(ConfigError, match="perm_subset_size=101 must be at most"):
    jigsaw.validate(_config(perm_subset_size=101))
  with pytest.raises(ConfigError, match="needs the 'crop_patches' op"):
    jigsaw.validate(_config(preprocessing="crop,standardization"))
  with pytest.raises(ConfigError, match="patch_jitter"):
    jigsaw.validate(_config(patch_jitter=16))
  with pytest.raises(ConfigError, match="num_permutations=30 is more than the 24"):
    jigsaw.validate(dataclasses.replace(_config(splits_per_side=2), num_permutations=30))
