"""Pooling of end points and patch combining against straightforward NumPy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from eval import pooling


def np_adaptive_pool(x, gh, gw, reduce):
  """Reference: output cell (i, j) covers rows [floor(i*h/gh), ceil((i+1)*h/gh)) and likewise."""
  _, h, w, _ = x.shape
  fn = np.max if reduce == "max" else np.mean
  out = np.zeros((x.shape[0], gh, gw, x.shape[3]), np.float64)
  for i in range(gh):
    r0, r1 = math.floor(i * h / gh), math.ceil((i + 1) * h / gh)
    for j in range(gw):
      c0, c1 = math.floor(j * w / gw), math.ceil((j + 1) * w / gw)
      out[:, i, j] = fn(x[:, r0:r1, c0:c1].astype(np.float64), axis=(1, 2))
  return out.reshape(x.shape[0], -1)


def np_plain_pool(x, k, reduce):
  """Reference: kernel = stride = k, the last window partial, no padding values."""
  _, h, w, _ = x.shape
  fn = np.max if reduce == "max" else np.mean
  gh, gw = -(-h // k), -(-w // k)
  out = np.zeros((x.shape[0], gh, gw, x.shape[3]), np.float64)
  for i in range(gh):
    for j in range(gw):
      out[:, i, j] = fn(x[:, i * k:(i + 1) * k, j * k:(j + 1) * k].astype(np.float64), axis=(1, 2))
  return out.reshape(x.shape[0], -1)


def brute_force_grid(h, w, c, budget):
  """Reference for adaptive_grid: largest aspect-preserving grid within the budget."""
  best = None
  for s in np.linspace(1e-6, 1.0, 20001):
    gh, gw = max(1, math.floor(s * h + 1e-9)), max(1, math.floor(s * w + 1e-9))
    if gh * gw * c <= budget and (best is None or (gh * gw, gh) > (best[0] * best[1], best[0])):
      best = (gh, gw)
  return best or (1, 1)


@pytest.mark.parametrize("h,w,c,budget", [
    (56, 56, 64, 9000), (28, 28, 128, 9000), (14, 14, 256, 9000), (7, 7, 512, 9000),
    (14, 7, 64, 9000), (3, 100, 64, 9000), (9, 13, 5, 100), (6, 6, 10, 200)])
def test_adaptive_grid(h, w, c, budget):
  gh, gw = pooling.adaptive_grid(h, w, c, budget)
  assert gh * gw * c <= budget and gh <= h and gw <= w
  assert (gh, gw) == brute_force_grid(h, w, c, budget)
  if h == w:
    assert gh == gw == min(h, math.floor(math.sqrt(budget / c)))


def test_grid_edge_cases():
  assert pooling.adaptive_grid(4, 4, 10, 9000) == (4, 4)       # Within budget: unchanged.
  assert pooling.adaptive_grid(7, 7, 9001, 9000) == (1, 1)     # C > budget: global pooling.
  assert pooling.adaptive_grid(56, 56, 64) == (11, 11)
  assert pooling.plain_pool_size(56, 56, 64) == 6              # ceil(56/6)=10: 10*10*64 <= 9000.
  assert pooling.plain_pool_size(7, 7, 9001) == 7
  assert pooling.adaptive_bins(5, 3) == [(0, 2), (1, 4), (3, 5)]
  assert pooling.plain_bins(5, 2) == [(0, 2), (2, 4), (4, 5)]
  with pytest.raises(ValueError, match="pool_mode 'median'.*adaptive_max"):
    pooling.pool_end_point(tf.zeros([1, 4, 4, 2]), "median")


@pytest.mark.parametrize("mode", pooling.POOL_MODES)
@pytest.mark.parametrize("shape,budget", [
    ((2, 9, 9, 4), 100), ((3, 10, 7, 3), 50), ((2, 13, 11, 2), 60), ((2, 5, 5, 300), 200),
    ((2, 3, 3, 2), 100)])
def test_pool_end_point_matches_numpy(mode, shape, budget):
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  _, h, w, c = shape
  got = pooling.pool_end_point(tf.constant(x), mode, budget).numpy()
  reduce = "max" if mode.endswith("max") else "avg"
  if h * w * c <= budget:
    want = x.reshape(shape[0], -1)
  elif mode.startswith("adaptive"):
    want = np_adaptive_pool(x, *pooling.adaptive_grid(h, w, c, budget), reduce)
  else:
    want = np_plain_pool(x, pooling.plain_pool_size(h, w, c, budget), reduce)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert got.shape[1] <= max(budget, c)
  assert got.shape[1] == pooling.pooled_shape(shape[1:], mode, budget)


def test_dynamic_batch_and_vectors():
  fn = tf.function(lambda x: pooling.pool_end_point(x, "adaptive_avg", 50),
                   input_signature=[tf.TensorSpec([None, 10, 7, 3])])
  x = np.random.default_rng(1).normal(size=(5, 10, 7, 3)).astype(np.float32)
  grid = pooling.adaptive_grid(10, 7, 3, 50)
  assert grid == (5, 3)
  np.testing.assert_allclose(fn(x).numpy(), np_adaptive_pool(x, *grid, "avg"), rtol=1e-5,
                             atol=1e-6)
  vec = tf.ones([2, 20000])  # Vectors are never pooled, whatever their size.
  assert pooling.pool_end_point(vec, "adaptive_max").shape == (2, 20000)


def _toy_representation(images):
  """End points of a fixed toy 'network': a 6x6x5 map and a vector."""
  pooled = tf.nn.avg_pool2d(images, 2, 2, "VALID")                  # [B, 6, 6, 3]
  spatial = tf.concat([pooled, pooled ** 2], axis=-1)[..., :5]     # [B, 6, 6, 5]
  return {"spatial": spatial, "vector": tf.reduce_mean(images, axis=[1, 2])}


@pytest.mark.parametrize("combine", ["avg_pool", "max_pool", "concat"])
def test_patch_combining(combine):
  rng = np.random.default_rng(2)
  patches = rng.normal(size=(3, 4, 12, 12, 3)).astype(np.float32)  # B=3, P=4.
  budget = 80
  got = pooling.pooled_features(_toy_representation, tf.constant(patches), ["spatial", "vector"],
                                "adaptive_max", combine, budget)
  flat = patches.reshape(12, 12, 12, 3)
  ends = {k: v.numpy() for k, v in _toy_representation(tf.constant(flat)).items()}
  per_patch_budget = budget // 4 if combine == "concat" else budget
  grid = pooling.adaptive_grid(6, 6, 5, per_patch_budget)
  per_patch = {"spatial": np_adaptive_pool(ends["spatial"], *grid, "max"),
               "vector": ends["vector"]}
  for name, value in per_patch.items():
    value = value.reshape(3, 4, -1)
    want = {"avg_pool": value.mean(axis=1), "max_pool": value.max(axis=1),
            "concat": value.reshape(3, -1)}[combine]
    np.testing.assert_allclose(got[name].numpy(), want, rtol=1e-5, atol=1e-6)
  assert got["spatial"].shape[1] <= budget
  if combine == "concat":
    assert grid == (2, 2) and got["spatial"].shape == (3, 4 * 2 * 2 * 5)
  else:
    assert grid == (4, 4) and got["spatial"].shape == (3, 4 * 4 * 5)


def test_single_images_and_bad_combine():
  images = tf.zeros([2, 12, 12, 3])
  out = pooling.pooled_features(_toy_representation, images, ["spatial"], "avg", "avg_pool", 50)
  assert out["spatial"].shape == (2, 45)  # k=2: 3x3x5.
  with pytest.raises(ValueError, match="combine_patches mode 'sum'.*concat"):
    pooling.pooled_features(_toy_representation, images, ["spatial"], "avg", "sum", 50)


@pytest.mark.parametrize("token_pooling,expected", [
    ("cls", lambda x: x[:, 0]),
    ("mean", lambda x: x[:, 1:].mean(1)),
    ("cls_mean", lambda x: np.concatenate([x[:, 0], x[:, 1:].mean(1)], axis=1)),
])
def test_tokens_are_pooled_to_the_class_token_the_patch_mean_or_both(token_pooling, expected):
  x = np.random.default_rng(0).normal(size=(3, 1 + 16, 8)).astype(np.float32)
  got = pooling.pool_end_point(tf.constant(x), "adaptive_max", 9000, token_pooling).numpy()
  np.testing.assert_allclose(got, expected(x), rtol=1e-6, atol=1e-6)
  assert got.shape[1] == pooling.pooled_shape((17, 8), "adaptive_max", 9000, token_pooling)
  with pytest.raises(ValueError, match="unknown token_pooling 'first'; valid choices: "
                                       "cls_mean, cls, mean"):
    pooling.pool_end_point(tf.constant(x), "adaptive_max", 9000, "first")
