"""The reconstruction family: the Lab conversion against NumPy written from the CIE equations and
against scikit-image, the colour bins and their assignment, the class rebalancing and the
losses against NumPy, the masking (exactly the hidden pixels are in the loss), the dense decoder's
output size on every architecture, short trainings whose losses drop on held-out images, an
export whose representation is the backbone on the evaluation input, and what they refuse."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
import datasets
from datasets import dense_targets
from methods import base
from methods import colorization
from methods import inpainting
import train_and_eval
from training import export as export_lib

COLOR_SPEC = "resize,flip_lr,ab_target,lightness,-1_to_1"
INPAINT_SPEC = "resize,flip_lr,-1_to_1,mask_region"


def numpy_lab(rgb):
  """CIE Lab of sRGB values in [0, 1] (IEC 61966-2-1 and CIE 15), in float64."""
  rgb = np.asarray(rgb, np.float64)
  linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
  m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                [0.019334, 0.119193, 0.950227]])
  xyz = linear @ m.T / m.sum(axis=1)  # Divided by the white's XYZ (RGB = 1, 1, 1).
  d = 6 / 29
  f = np.where(xyz > d ** 3, np.cbrt(xyz), xyz / (3 * d * d) + 4 / 29)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                   200 * (f[..., 1] - f[..., 2])], axis=-1)


def test_lab_matches_the_cie_equations_and_scikit_image():
  from skimage import color  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  rgb = np.concatenate([rng.uniform(size=(2000, 3)), np.eye(3), [[0, 0, 0], [1, 1, 1],
                                                                  [0.02, 0.03, 0.01]]])
  ours = dense_targets.rgb_to_lab(np.float32(rgb)).numpy()
  np.testing.assert_allclose(ours, numpy_lab(rgb), atol=2e-3)
  np.testing.assert_allclose(ours[-2], [100, 0, 0], atol=1e-3)  # White.
  np.testing.assert_allclose(ours[-3], [0, 0, 0], atol=1e-4)    # Black.
  # scikit-image's white point differs from the matrix's rows' sums in the 5th digit.
  np.testing.assert_allclose(ours, color.rgb2lab(rgb[:, None])[:, 0], atol=0.05)


def test_colour_ops_give_the_lightness_as_input_and_the_colours_as_target():
  rng = np.random.default_rng(1)
  image = np.float32(rng.uniform(size=(40, 40, 3)))
  config = datasets.PreprocessConfig(resize_size=32)
  out = datasets.get_preprocess_fn(COLOR_SPEC.replace("flip_lr,", ""), True, config)(
      {"image": tf.constant(image), "label": tf.constant(1)})
  resized = tf.image.resize(image, (32, 32)).numpy()
  lab = numpy_lab(resized)
  np.testing.assert_allclose(out["target"].numpy(), lab[..., 1:], atol=2e-3)
  for c in range(3):
    np.testing.assert_allclose(out["image"].numpy()[..., c], lab[..., 0] / 50.0 - 1.0, atol=1e-4)
  # The evaluation input keeps the lightness and drops the target.
  from core import specs  # pylint: disable=g-import-not-at-top
  assert specs.representation_spec(COLOR_SPEC) == "resize,flip_lr,lightness,-1_to_1"


def test_every_srgb_colour_falls_in_a_bin_of_its_own_cell():
  centres = colorization.bin_centres()
  assert centres.shape == (261, 2) and np.all(np.abs(centres) <= 110)
  np.testing.assert_array_equal(centres % 10, 0)
  rng = np.random.default_rng(2)
  ab = numpy_lab(rng.uniform(size=(100_000, 3)))[:, 1:]
  chosen = centres[colorization.quantise(np.float32(ab)).numpy()]
  assert np.abs(chosen - ab).max() <= 5.0 + 1e-3  # The bins cover the whole gamut.
  # Outside the gamut, the bin of the nearest centre to the cell's centre.
  far = rng.uniform(-130, 130, size=(5000, 2))
  cell = np.clip(np.round(far / 10), -11, 11) * 10
  chosen = centres[colorization.quantise(np.float32(far)).numpy()]
  distance = ((cell[:, None] - centres[None]) ** 2).sum(-1)
  np.testing.assert_allclose(((cell - chosen) ** 2).sum(-1), distance.min(1))


def numpy_rebalance(frequencies, rebalance, sigma=5.0):
  centres = colorization.bin_centres().astype(np.float64)
  kernel = np.exp(-((centres[:, None] - centres[None]) ** 2).sum(-1) / (2 * sigma ** 2))
  p = kernel @ frequencies
  p /= p.sum()
  w = 1.0 / ((1 - rebalance) * p + rebalance / len(p))
  return w / (p * w).sum()


def test_rebalancing_weights_and_loss_match_numpy():
  rng = np.random.default_rng(3)
  q = colorization.num_bins()
  frequencies = rng.dirichlet(np.full(q, 0.1))
  for rebalance in (0.0, 0.5, 1.0):
    ours = colorization.rebalance_weights(tf.constant(np.float32(frequencies)), rebalance).numpy()
    np.testing.assert_allclose(ours, numpy_rebalance(frequencies, rebalance), rtol=1e-4)
  np.testing.assert_allclose(colorization.rebalance_weights(frequencies, 1.0), 1.0, rtol=1e-5)
  logits = rng.normal(size=(2, 4, 5, q)).astype(np.float32)
  bins = rng.integers(0, q, size=(2, 4, 5)).astype(np.int32)
  weights = numpy_rebalance(frequencies, 0.5)
  loss, accuracy, unweighted = colorization.colorization_loss(
      logits, bins, tf.constant(np.float32(weights)))
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  ce = -np.take_along_axis(log_p, bins[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, (ce * weights[bins]).mean((1, 2)), rtol=1e-5)
  np.testing.assert_allclose(unweighted, ce.mean((1, 2)), rtol=1e-5)
  np.testing.assert_allclose(accuracy, (logits.argmax(-1) == bins).mean((1, 2)))
  counts = colorization.bin_counts(tf.constant(bins)).numpy()
  for i in range(2):
    np.testing.assert_array_equal(counts[i], np.bincount(bins[i].ravel(), minlength=q))


def _config(task, **overrides):
  values = dict(task=task, workdir="/unused", architecture="resnet50", filters_factor=1,
                preprocessing=COLOR_SPEC if task == "colorization" else INPAINT_SPEC,
                resize_size=(32, 32), batch_size=8, decoder_width=64)
  values.update(overrides)
  return Config(**values)


def test_the_frequencies_are_the_moving_average_of_the_global_batches():
  tf.keras.utils.set_random_seed(4)
  config = _config("colorization", architecture="vit", vit_patch_size=8)
  model = colorization.build_model(config, (32, 32, 3), None)
  q = colorization.num_bins()
  np.testing.assert_allclose(model.frequencies(), np.full(q, 1 / q), rtol=1e-6)
  rng = np.random.default_rng(4)
  total, weight = np.zeros(q), 0.0
  for _ in range(3):
    counts = rng.integers(0, 5, size=(6, q)).astype(np.float32)
    colorization.after_step(model, {"bin_counts": tf.constant(counts)}, 0.0, config)
    total = 0.99 * total + 0.01 * counts.sum(0) / counts.sum()
    weight = 0.99 * weight + 0.01
  np.testing.assert_allclose(model.frequencies(), total / weight, rtol=1e-5)


def test_the_mask_hides_a_central_quarter_or_random_blocks():
  image = np.float32(np.random.default_rng(5).uniform(-1, 1, size=(32, 32, 3)))
  centre = datasets.get_preprocess_fn("mask_region", True, datasets.PreprocessConfig())(
      {"image": tf.constant(image), "label": tf.constant(0)})
  mask = centre["mask"].numpy()[..., 0]
  expected = np.zeros((32, 32))
  expected[8:24, 8:24] = 1
  np.testing.assert_array_equal(mask, expected)
  np.testing.assert_array_equal(centre["image"].numpy(), image * (1 - expected[..., None]))
  np.testing.assert_array_equal(centre["target"].numpy(), image)
  blocks = datasets.PreprocessConfig(inpainting_mask="blocks", mask_area=0.25)
  tf.random.set_seed(6)
  areas = [dense_targets.region_mask(32, 32, "blocks", 0.25).numpy().mean() for _ in range(20)]
  # Four 8x8 blocks: a sixteenth each, a quarter at most, more than one block's at least once.
  assert min(areas) >= 1 / 16 and max(areas) <= 0.25 and max(areas) > 1 / 16
  out = datasets.get_preprocess_fn("mask_region", True, blocks)(
      {"image": tf.constant(image), "label": tf.constant(0)})
  hidden = out["mask"].numpy() > 0
  assert np.all(out["image"].numpy()[np.broadcast_to(hidden, image.shape)] == 0)


def test_exactly_the_hidden_pixels_are_in_the_loss():
  rng = np.random.default_rng(7)
  target = np.float32(rng.uniform(-1, 1, size=(2, 8, 8, 3)))
  mask = np.zeros((2, 8, 8, 1), np.float32)
  mask[0, 2:6, 2:6] = 1
  mask[1, :3, :] = 1
  prediction = np.float32(rng.uniform(-1, 1, size=target.shape))
  loss, psnr = inpainting.inpainting_loss(prediction, target, mask)
  expected = [((prediction[i] - target[i]) ** 2)[mask[i, ..., 0] > 0].mean() for i in range(2)]
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  np.testing.assert_allclose(psnr, 10 * np.log10(4 / np.array(expected)), rtol=1e-5)
  # Anything outside the region leaves the loss as it is; a pixel inside changes it.
  outside = np.where(mask > 0, prediction, 7.0)
  np.testing.assert_allclose(inpainting.inpainting_loss(outside, target, mask)[0], loss)
  inside = prediction.copy()
  inside[0, 3, 3] += 1.0
  assert inpainting.inpainting_loss(inside, target, mask)[0][0] > loss[0]


@pytest.mark.parametrize("architecture,overrides", [
    ("resnet50", dict(mode="v1")), ("resnet50", dict(mode="v2")), ("revnet50", {}),
    ("vgg19", {}), ("vit", dict(vit_patch_size=8))])
@pytest.mark.parametrize("stride", [1, 2])
def test_the_decoder_gives_the_input_size_on_every_architecture(architecture, overrides, stride):
  tf.keras.utils.set_random_seed(8)
  config = _config("inpainting", architecture=architecture, dense_output_stride=stride,
                   **overrides)
  model = inpainting.build_model(config, (32, 32, 3), None)
  out = model(tf.zeros([2, 32, 32, 3]))
  assert out["logits"].shape == (2, 32 // stride, 32 // stride, 3)
  # The probes see the backbone's end points, not the dense output.
  assert model.probed_end_points == list(model.backbone(tf.zeros([1, 32, 32, 3])))
  assert "logits" not in model.probed_end_points


def test_skips_join_the_decoder_at_their_size_and_change_its_output():
  tf.keras.utils.set_random_seed(9)
  plain = inpainting.build_model(_config("inpainting"), (32, 32, 3), None)
  skips = inpainting.build_model(
      _config("inpainting", decoder_end_points=["block4", "block2", "after_root"]), (32, 32, 3),
      None)
  # block4 is 1x1: projected to 4x4 first, then a stage there and three 2x ones.
  assert plain.decoder.projected == (4, 4)
  assert plain.decoder.stage_sizes == [(4, 4), (8, 8), (16, 16), (32, 32)]
  assert skips.decoder.skip_stages == [0, 1]  # block2 at 4x4, after_root at 8x8.
  assert skips.decoder.conv1.kernel.shape[2] == 64 + 128  # The projection's and block2's.
  assert skips.decoder.conv2.kernel.shape[2] == 64 + 16  # The first stage's and after_root's.
  images = tf.random.uniform([2, 32, 32, 3])
  # The output varies over the image, though it starts from one vector per image.
  assert float(tf.math.reduce_std(plain(images)["logits"][0, ..., 0])) > 1e-3
  for overrides, message in (
      (dict(decoder_end_points=["block9"]), r"block9 not end points of resnet50; valid choices"),
      (dict(decoder_end_points=["pre_logits"]), "pre_logits of resnet50 is a vector"),
      (dict(decoder_end_points=["block2", "block4"]), "block4's 1x1 map is not on the decoder's"),
      (dict(dense_output_stride=3), "--dense_output_stride=3 does not divide the 32x32 input")):
    with pytest.raises(ConfigError, match=message):
      inpainting.build_model(_config("inpainting", **overrides), (32, 32, 3), None)


def test_validation_names_the_op_and_its_place():
  colorization.validate(_config("colorization"))
  inpainting.validate(_config("inpainting"))
  for task, spec, message in (
      ("colorization", "resize,lightness,-1_to_1", "needs the 'ab_target' op"),
      ("colorization", "resize,ab_target,-1_to_1", "needs the 'lightness' op"),
      ("colorization", "resize,lightness,ab_target,-1_to_1", "comes before 'lightness'"),
      ("colorization", "resize,-1_to_1,ab_target,lightness", "before -1_to_1"),
      ("inpainting", "resize,-1_to_1", "needs the 'mask_region' op"),
      ("inpainting", "resize,mask_region,-1_to_1", "put one of -1_to_1, inception_preprocess "
                                                   "before it")):
    with pytest.raises(ConfigError, match=message):
      getattr({"colorization": colorization, "inpainting": inpainting}[task], "validate")(
          _config(task, preprocessing=spec))
  with pytest.raises(ValueError, match="inpainting takes single images"):
    inpainting.build_model(_config("inpainting"), (4, 32, 32, 3), None)


def _blob_images(rng, n, size=32):
  """Images of a coloured disc on a grey ground: the disc's colour follows its brightness (so
  it can be told from the lightness), its place and size vary."""
  yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
  out = []
  for _ in range(n):
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r = rng.uniform(0.15, 0.3)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
    bright = rng.uniform()
    colour = np.array([bright, 1 - bright, 0.5])
    out.append(np.where(disc, colour, 0.5))
  return np.float32(out)


def _train(method, config, train, held_out, steps, lr=2e-3):
  model = method.build_model(config, train["image"].shape[1:], None)
  variables = base.trained_variables(model)
  optimizer = tf.keras.optimizers.Adam(lr)

  def held_out_loss():
    tf.random.set_seed(11)
    return float(method.model_fn(model, held_out, base.EVAL, config).loss)

  @tf.function
  def step(batch):
    with tf.GradientTape() as tape:
      spec = method.model_fn(model, batch, base.TRAIN, config)
    optimizer.apply_gradients(zip(tape.gradient(spec.loss, variables), variables))
    return spec.updates

  before = held_out_loss()
  n = train["image"].shape[0]
  for i in range(steps):
    rows = slice((i * 16) % n, (i * 16) % n + 16)
    updates = step({k: v[rows] for k, v in train.items()})
    if hasattr(method, "after_step"):
      method.after_step(model, updates, 0.0, config)
  return before, held_out_loss()


def _prepared(spec, images, config):
  fn = datasets.get_preprocess_fn(spec, True, datasets.PreprocessConfig.of(config))
  out = [fn({"image": tf.constant(image), "label": tf.constant(0)}) for image in images]
  return {k: tf.stack([o[k] for o in out]) for k in out[0] if k != "label"}


def test_training_lowers_both_losses_on_held_out_images():
  rng = np.random.default_rng(10)
  images, held_out = _blob_images(rng, 128), _blob_images(rng, 32)
  for method, spec in ((colorization, COLOR_SPEC), (inpainting, INPAINT_SPEC)):
    tf.keras.utils.set_random_seed(12)
    config = _config(method.__name__.split(".")[-1], architecture="vit", vit_patch_size=8,
                     preprocessing=spec, dense_output_stride=2, color_rebalance=1.0)
    before, after = _train(method, config, _prepared(spec, images, config),
                           _prepared(spec, held_out, config), steps=80)
    assert after < 0.6 * before, (method.__name__, before, after)


@pytest.mark.slow
@pytest.mark.parametrize("task,spec,eval_spec", [
    ("colorization", COLOR_SPEC, "resize,flip_lr,lightness,-1_to_1"),
    ("inpainting", INPAINT_SPEC, "resize,flip_lr,-1_to_1")])
def test_trains_and_exports_the_backbone_on_the_evaluation_input(tmp_path, shapes_data_dir,
                                                                  task, spec, eval_spec):
  """A few steps through train_and_eval: the pretext metric logged and evaluated, an export
  whose probed end points are the backbone's and that serves the model's own outputs."""
  lines = []
  config = _config(task, workdir=str(tmp_path / "wd"), dataset="shapes_small",
                   data_dir=shapes_data_dir, batch_size=16, eval_batch_size=32,
                   optimizer="adam", lr=0.002, lr_scale_batch_size=16, epochs=1,
                   train_split="train[:48]", val_split="test[:32]", log_every_steps=1,
                   save_checkpoints_secs=None, run_eval=True, dense_output_stride=2)
  results = train_and_eval.run(config, print_fn=lines.append)
  metric = "accuracy" if task == "colorization" else "psnr"
  assert results["step"] == 3 and np.isfinite(results["eval_metrics"][metric])
  assert any(l.startswith("step 3/3") and f" {metric} " in l for l in lines)
  info = export_lib.load_export_info(results["export_dir"])
  assert info["eval_preprocessing"] == eval_spec and info["input_shape"] == [32, 32, 3]
  assert info["end_points"] == ["after_root", "block1", "block2", "block3", "block4",
                                "pre_logits"]
  outputs = tf.saved_model.load(results["export_dir"]).signatures["representation"](
      images=tf.zeros([2, 32, 32, 3]))
  channels = colorization.num_bins() if task == "colorization" else 3
  assert outputs["block4"].shape == (2, 1, 1, 512) and outputs["logits"].shape == (
      2, 16, 16, channels)


def test_a_probe_without_the_lightness_of_a_colorization_export_is_refused():
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  info = {"eval_preprocessing": "resize,flip_lr,lightness,-1_to_1",
          "preprocess_config": {"resize_size": [32, 32]}}

  def config(spec):
    return linear_eval.LinearEvalConfig(workdir="w", hub_module="/x", eval_preprocessing=spec)

  assert linear_eval.eval_data(config(None), info).eval_spec == info["eval_preprocessing"]
  assert linear_eval.eval_data(config("resize,lightness,-1_to_1"), info)
  with pytest.raises(ConfigError, match=r"eval_preprocessing='resize,-1_to_1' lacks 'lightness', "
                                        r"which makes the input the export's backbone was "
                                        r"trained on"):
    linear_eval.eval_data(config("resize,-1_to_1"), info)


def test_the_decoders_settings_are_refused_before_any_work(shapes_data_dir):
  """The checks that run before training (--check_only, a grid's checks) build the decoder on
  the input the pipeline makes, and refuse what build_model would."""
  from training import validation  # pylint: disable=g-import-not-at-top
  config = _config("inpainting", dataset="shapes_small", data_dir=shapes_data_dir,
                   train_split="train[:16]")
  validation.check_input_side(config)
  for overrides, message in ((dict(decoder_end_points=["block9"]), "block9 not end points"),
                             (dict(dense_output_stride=3), "--dense_output_stride=3 does not")):
    with pytest.raises(ConfigError, match=message):
      validation.check_input_side(dataclasses.replace(config, **overrides))
