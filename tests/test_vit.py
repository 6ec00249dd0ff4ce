"""The Vision Transformer (models/vit.py): the published sizes' parameter counts, the end points
and their token layout, attention against NumPy written from the equations, the class token,
position embeddings (learned and interpolated, sine-cosine), checkpoints, the settings it refuses,
and its variant in grid cells and baselines."""

import numpy as np
import pytest
import tensorflow as tf

from core import architectures
import models
from models import vit


def _images(n, size, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)), tf.float32)


@pytest.mark.parametrize("heads,published", [(3, 5_717_416), (6, 22_050_664),
                                             (12, 86_567_656)])
def test_published_sizes_have_their_parameter_counts(heads, published):
  """ViT-Ti/16, ViT-S/16 and ViT-B/16 at 224x224 with a 1000-class head (the counts of the
  reference implementations: 12 blocks, widths 192/384/768, MLP ratio 4, biases everywhere)."""
  model = models.get_model("vit", num_classes=1000, filters_factor=heads, vit_patch_size=16)
  model.build((None, 224, 224, 3))
  assert model.count_params() == published


def test_end_points_are_every_blocks_tokens_the_final_norm_and_the_class_token():
  model = models.get_model("vit", num_classes=5, filters_factor=1, vit_patch_size=4)
  out = model(_images(2, 32))
  assert list(out) == models.end_point_names("vit", with_logits=True)
  assert list(out)[:12] == [f"block{i}" for i in range(1, 13)]
  for name in [f"block{i}" for i in range(1, 13)] + ["final_norm"]:
    assert tuple(out[name].shape) == (2, 1 + 8 * 8, 64), name
  assert tuple(out["pre_logits"].shape) == (2, 64) and tuple(out["logits"].shape) == (2, 5)
  np.testing.assert_array_equal(out["pre_logits"].numpy(), out["final_norm"][:, 0].numpy())
  expected = model.final_norm(out["block12"]).numpy()
  np.testing.assert_allclose(out["final_norm"].numpy(), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["logits"].numpy(),
                             model.logits_layer(out["pre_logits"]).numpy(), rtol=1e-5, atol=1e-5)


def test_attention_matches_numpy():
  """softmax(Q K^T / sqrt(d)) V per head, the heads concatenated, then the output projection."""
  layer = vit.Attention(width=12, heads=3)
  x = np.random.default_rng(1).normal(size=(2, 5, 12)).astype(np.float32)
  layer.build(x.shape)
  weights, _ = layer.attention(tf.constant(x))
  out = layer(tf.constant(x)).numpy()
  kernel, bias = layer.qkv.kernel.numpy(), layer.qkv.bias.numpy()
  qkv = (x @ kernel + bias).reshape(2, 5, 3, 3, 4)
  q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [B, heads, T, 4]
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(4.0)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  heads = (p @ v).transpose(0, 2, 1, 3).reshape(2, 5, 12)
  expected = heads @ layer.proj.kernel.numpy() + layer.proj.bias.numpy()
  np.testing.assert_allclose(weights.numpy(), p, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(weights.numpy().sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def test_the_class_token_and_positions_enter_before_the_first_block():
  """Block 1's input is [cls + pos_0, patch_i + pos_i]: a block that adds nothing (its two
  residual branches zeroed) passes it through, so block1's output shows it."""
  model = models.get_model("vit", num_classes=None, filters_factor=1, vit_patch_size=8)
  images = _images(1, 16)
  model(images)
  first = model.block1
  for layer in (first.attn.proj, first.fc2):
    layer.kernel.assign(tf.zeros_like(layer.kernel))
    layer.bias.assign(tf.zeros_like(layer.bias))
  tokens = model(images)["block1"].numpy()[0]
  patches = model.patch_embed(images).numpy().reshape(4, 64)
  position = model.position.numpy()[0]
  np.testing.assert_allclose(tokens[0], model.cls_token.numpy()[0, 0] + position[0], atol=1e-6)
  np.testing.assert_allclose(tokens[1:], patches + position[1:], rtol=1e-5, atol=1e-5)


def test_learned_positions_are_interpolated_to_another_image_size():
  model = models.get_model("vit", num_classes=3, filters_factor=1, vit_patch_size=4)
  model.build((None, 32, 32, 3))
  np.testing.assert_array_equal(model.position_embedding((8, 8)).numpy(),
                                model.position.numpy())
  bigger = model(_images(2, 48))
  assert tuple(bigger["block3"].shape) == (2, 1 + 12 * 12, 64)
  resized = model.position_embedding((12, 12)).numpy()
  np.testing.assert_array_equal(resized[0, 0], model.position.numpy()[0, 0])  # The class token.
  # A constant grid stays constant under bicubic interpolation.
  model.position.assign(tf.ones_like(model.position))
  np.testing.assert_allclose(model.position_embedding((12, 12)).numpy(), 1.0, rtol=1e-5)


def test_sincos_positions_follow_the_formula_for_any_grid():
  table = vit.sincos_position_embedding(2, 3, 8)
  assert table.shape == (6, 8)
  omega = 1.0 / 10000 ** (np.arange(2) / 2.0)
  row, col = 1, 2  # Token 5 in row-major order.
  expected = np.concatenate([np.sin(row * omega), np.cos(row * omega), np.sin(col * omega),
                             np.cos(col * omega)])
  np.testing.assert_allclose(table[5], expected, rtol=1e-6, atol=1e-7)
  model = models.get_model("vit", num_classes=None, filters_factor=1, vit_patch_size=4,
                           vit_position_embedding="sincos")
  out = model(_images(1, 24))
  assert tuple(out["block12"].shape) == (1, 37, 64)
  assert not any("position" in v.name for v in model.weights)
  embedding = model.position_embedding((6, 6)).numpy()[0]
  np.testing.assert_array_equal(embedding[0], 0.0)
  np.testing.assert_allclose(embedding[1:], vit.sincos_position_embedding(6, 6, 64), atol=1e-7)


def test_a_checkpoint_restores_the_same_outputs_and_every_variable_trains(tmp_path):
  model = models.get_model("vit", num_classes=4, filters_factor=1, vit_patch_size=8)
  images = _images(2, 16)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(images)["logits"] ** 2)
  grads = tape.gradient(loss, model.trainable_variables)
  assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  restored = models.get_model("vit", num_classes=4, filters_factor=1, vit_patch_size=8)
  restored.build((None, 16, 16, 3))
  tf.train.Checkpoint(model=restored).restore(path).assert_consumed()
  np.testing.assert_array_equal(model(images)["logits"].numpy(),
                                restored(images)["logits"].numpy())


@pytest.mark.parametrize("kwargs,size,message", [
    (dict(vit_position_embedding="rope"), 32, "unknown position_embedding 'rope'; valid choices: "
                                          "learned, sincos"),
    (dict(vit_patch_size=0), 32, "patch_size must be a positive integer, got 0"),
    (dict(vit_patch_size=16), 8, "images of 8x8 hold no patch of 16x16"),
])
def test_bad_settings_are_refused(kwargs, size, message):
  with pytest.raises(ValueError, match=message):
    model = models.get_model("vit", num_classes=None, filters_factor=1, **kwargs)
    model(_images(1, size))


def test_the_patch_size_is_the_variant_of_grid_cells_and_baselines():
  assert architectures.variant_label("vit", {"vit_patch_size": 4}.get) == "p4"
  assert architectures.variant_flags("vit", "p4") == {"vit_patch_size": "4"}
  assert architectures.variant_label("resnet50", {"mode": "v1"}.get) == "v1"
  assert architectures.variant_flags("resnet50", "v1") == {"mode": "v1"}
  assert architectures.variant_label("vgg19", {}.get) is None
