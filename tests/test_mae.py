"""MAE: the loss against NumPy written from the paper's equations, the masking (exactly the
requested ratio, the encoder blind to the masked patches, the decoder's tokens in the image's
order), the patches' pixel order, a short training whose loss drops on held-out images, the
export of the unmasked encoder, and what it refuses."""

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import base
from methods import mae
import train_and_eval
from training import export as export_lib
from training import validation


def numpy_patches(images, p):
  """Each p x p patch, row-major over the grid, its pixels in (row, column, channel) order."""
  b, h, w, c = images.shape
  out = np.zeros([b, (h // p) * (w // p), p * p * c], images.dtype)
  for i in range(h // p):
    for j in range(w // p):
      out[:, i * (w // p) + j] = images[:, i * p:(i + 1) * p, j * p:(j + 1) * p].reshape(b, -1)
  return out


def numpy_mae_loss(prediction, images, mask, p, norm_pix):
  """He et al. 2022: the mean squared error of the masked patches' pixels, each patch's target
  normalised by its pixels' mean and (Bessel-corrected) variance + 1e-6 with norm_pix; the mean
  over the masked patches of an image. PSNR of the masked patches' reconstruction in pixels, for
  a peak-to-peak of 2."""
  prediction, target = np.float64(prediction), np.float64(numpy_patches(images, p))
  losses, psnrs = [], []
  for pred, pixels, m in zip(prediction, target, mask):
    errors, pixel_errors = [], []
    for y, t, masked in zip(pred, pixels, m):
      if not masked:
        continue
      mean, std = t.mean(), np.sqrt(t.var(ddof=1) + 1e-6)
      goal = (t - mean) / std if norm_pix else t
      errors.append(np.mean((y - goal) ** 2))
      in_pixels = y * std + mean if norm_pix else y
      pixel_errors.append(np.mean((in_pixels - t) ** 2))
    losses.append(np.mean(errors))
    psnrs.append(10 * np.log10(4.0 / np.mean(pixel_errors)))
  return np.array(losses), np.array(psnrs)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("p,size", [(4, 16), (2, 6)])
def test_loss_and_psnr_match_numpy(norm_pix, p, size):
  rng = np.random.default_rng(p + size)
  images = rng.uniform(-1, 1, size=(3, size, size, 3)).astype(np.float32)
  patches = (size // p) ** 2
  prediction = rng.normal(size=(3, patches, p * p * 3)).astype(np.float32)
  mask = (rng.uniform(size=(3, patches)) < 0.6).astype(np.float32)
  mask[:, 0] = 1.0
  loss, psnr = mae.mae_loss(tf.constant(prediction), mae.patchify(tf.constant(images), p),
                            tf.constant(mask), norm_pix)
  want_loss, want_psnr = numpy_mae_loss(prediction, images, mask, p, norm_pix)
  np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(psnr.numpy(), want_psnr, rtol=1e-5, atol=1e-5)


def test_patchify_orders_patches_row_major_and_drops_partial_ones():
  images = np.arange(2 * 10 * 9 * 3, dtype=np.float32).reshape(2, 10, 9, 3)
  got = mae.patchify(tf.constant(images), 4).numpy()
  assert got.shape == (2, 4, 48)
  np.testing.assert_array_equal(got, numpy_patches(images[:, :8, :8], 4))


@pytest.mark.parametrize("patches,ratio,keep", [(64, 0.75, 16), (196, 0.75, 49), (10, 0.5, 5),
                                                (7, 0.9, 0)])
def test_masking_keeps_exactly_the_requested_share(patches, ratio, keep):
  assert mae.kept_patches(patches, ratio) == keep
  if not keep:
    return
  kept, restore, mask = mae.random_masking(5, patches, keep)
  mask = mask.numpy()
  np.testing.assert_array_equal(mask.sum(axis=1), [patches - keep] * 5)
  for k, m in zip(kept.numpy(), mask):
    assert len(set(k)) == keep and not m[k].any()  # The kept patches are the unmasked ones.
  assert sorted(restore.numpy()[0]) == list(range(patches))


def test_the_decoder_sees_the_tokens_in_the_images_order():
  tf.random.set_seed(0)
  patches, keep = 12, 4
  kept, restore, mask = mae.random_masking(3, patches, keep)
  # Each kept token carries its patch's index; the mask token is -1.
  tokens = tf.cast(kept, tf.float32)[:, :, None] * tf.ones([1, 1, 2])
  ordered = mae.restore_order(tokens, tf.constant([-1.0, -1.0]), restore).numpy()
  expected = np.where(mask.numpy() > 0, -1.0, np.arange(patches)[None])
  np.testing.assert_array_equal(ordered[..., 0], expected)
  np.testing.assert_array_equal(ordered[..., 1], expected)


def _tiny(**overrides):
  values = dict(task="mae", workdir="/unused", preprocessing="resize,flip_lr,-1_to_1",
                architecture="vit", filters_factor=1, vit_patch_size=4,
                vit_position_embedding="sincos", decoder_depth=1, decoder_width=32,
                decoder_heads=2, resize_size=(16, 16), batch_size=8)
  values.update(overrides)
  return Config(**values)


def test_the_encoder_sees_the_kept_patches_only():
  tf.keras.utils.set_random_seed(1)
  config = _tiny()
  model = mae.build_model(config, (16, 16, 3), None)
  images = tf.random.uniform([2, 16, 16, 3], -1, 1)
  tf.random.set_seed(7)
  end_points, prediction, mask = model.masked(images, config.mask_ratio)
  assert end_points["block1"].shape == (2, 1 + 4, 64)  # The class token and 4 of 16 patches.
  assert prediction.shape == (2, 16, 4 * 4 * 3)
  # Other pixels in every masked patch: the same mask (the same seed) gives the same output.
  pixel_mask = tf.reshape(mask, [2, 4, 1, 4, 1, 1]) * tf.ones([1, 1, 4, 1, 4, 3])
  pixel_mask = tf.reshape(pixel_mask, [2, 16, 16, 3])
  changed = images * (1 - pixel_mask) + 5.0 * pixel_mask
  tf.random.set_seed(7)
  _, again, same_mask = model.masked(changed, config.mask_ratio)
  np.testing.assert_array_equal(same_mask.numpy(), mask.numpy())
  np.testing.assert_allclose(again.numpy(), prediction.numpy(), rtol=1e-5, atol=1e-5)
  # A kept patch's pixels do change it.
  tf.random.set_seed(7)
  _, other, _ = model.masked(images * 2.0, config.mask_ratio)
  assert np.abs(other.numpy() - prediction.numpy()).max() > 1e-3


def test_training_lowers_the_loss_on_held_out_images():
  tf.keras.utils.set_random_seed(2)
  config = _tiny(decoder_depth=2)
  model = mae.build_model(config, (16, 16, 3), None)
  # Images of a few smooth blobs: the masked patches are predictable from the kept ones.
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:16, 0:16] / 15.0

  def images(n):
    out = []
    for _ in range(n):
      cy, cx, r = rng.uniform(0.2, 0.8, 3)
      colour = rng.uniform(-1, 1, 3)
      blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 + 0.1 * r))
      out.append(np.clip(blob[..., None] * colour, -1, 1))
    return tf.constant(np.float32(out))

  train, held_out = images(256), images(64)

  def held_out_loss():
    tf.random.set_seed(11)
    return float(mae.model_fn(model, {"image": held_out}, base.EVAL, config).loss)

  before = held_out_loss()
  optimizer = tf.keras.optimizers.Adam(2e-3)
  variables = base.trained_variables(model)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      spec = mae.model_fn(model, {"image": batch}, base.TRAIN, config)
    optimizer.apply_gradients(zip(tape.gradient(spec.loss, variables), variables))

  for i in range(120):
    step(train[(i % 8) * 32:(i % 8 + 1) * 32])
  after = held_out_loss()
  assert after < 0.6 * before, (before, after)


def test_the_model_serves_the_unmasked_encoder_and_its_reconstruction():
  tf.keras.utils.set_random_seed(3)
  config = _tiny()
  model = mae.build_model(config, (16, 16, 3), None)
  images = tf.random.uniform([2, 16, 16, 3], -1, 1)
  out = model(images)
  backbone = model.backbone(images)
  for name, value in backbone.items():
    np.testing.assert_allclose(out[name].numpy(), value.numpy())
  assert out["logits"].shape == (2, 16, 48) and out["block12"].shape == (2, 17, 64)
  spec = mae.model_fn(model, {"image": images}, base.PREDICT, config)
  assert spec.loss is None and spec.predictions["reconstruction"].shape == (2, 16, 48)


def test_validation():
  validation.validate(_tiny())
  for overrides, message in (
      (dict(architecture="resnet50"), "--architecture=resnet50 is not one; valid choices: vit"),
      (dict(preprocessing="resize"), r"--preprocessing='resize' has none of -1_to_1, inception"),
      (dict(decoder_width=30, decoder_heads=3), "--decoder_width=30: the decoder's sine-cosine"),
      (dict(decoder_width=32, decoder_heads=3), "does not split into --decoder_heads=3"),
  ):
    with pytest.raises(ConfigError, match=message):
      mae.validate(_tiny(**overrides))
  with pytest.raises(ConfigError, match=r"--mask_ratio=0.95 of the 16 patches .* keeps 0"):
    mae.build_model(_tiny(mask_ratio=0.95), (16, 16, 3), None)
  with pytest.raises(ValueError, match="mae takes single images"):
    mae.build_model(_tiny(), (2, 16, 16, 3), None)


@pytest.mark.slow
def test_mae_trains_and_exports_the_unmasked_encoder(tmp_path, shapes_data_dir):
  """A few steps through train_and_eval: PSNR logged and evaluated, and an export whose
  representation is the ViT's end points on every patch, whose evaluation input is the image."""
  lines = []
  config = _tiny(workdir=str(tmp_path / "wd"), dataset="shapes_small", data_dir=shapes_data_dir,
                 resize_size=(32, 32), batch_size=16, eval_batch_size=32, optimizer="adam",
                 lr=0.002, lr_scale_batch_size=16, epochs=1, train_split="train[:48]",
                 val_split="test[:32]", log_every_steps=1, save_checkpoints_secs=None,
                 run_eval=True)
  results = train_and_eval.run(config, print_fn=lines.append)
  assert results["step"] == 3
  assert np.isfinite(results["eval_metrics"]["loss"]) and results["eval_metrics"]["psnr"] > 0
  assert any(l.startswith("step 3/3") and " psnr " in l for l in lines)
  info = export_lib.load_export_info(results["export_dir"])
  assert info["eval_preprocessing"] == "resize,flip_lr,-1_to_1"
  assert info["input_shape"] == [32, 32, 3]
  # The probes see the encoder's end points; the reconstruction is served, not probed.
  assert info["end_points"] == [f"block{i}" for i in range(1, 13)] + ["final_norm", "pre_logits"]
  out = tf.saved_model.load(results["export_dir"]).signatures["representation"](
      images=tf.zeros([3, 32, 32, 3]))
  assert out["block12"].shape == (3, 65, 64) and out["logits"].shape == (3, 64, 48)
