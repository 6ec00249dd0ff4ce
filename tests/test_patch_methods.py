"""Patch methods: crop_patches geometry, relative-location labels, training steps, export."""

import dataclasses
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
import datasets
from datasets import PreprocessConfig, get_preprocess_fn
from datasets.preprocess import patch_geometry
from eval import pooling
import methods
from methods import base
from methods import patch_utils
from methods import relative_patch_location as rpl
from tests.conftest import REPO_ROOT
import train_and_eval
from training import export as export_lib
from training import validation


def _coordinate_image(h, w):
  """Channel 0 = row, channel 1 = column, channel 2 = 1: a patch's values give its position."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([rows, cols, np.ones_like(rows)], axis=-1).astype(np.float32)


def _patches(image, is_training, splits=3, jitter=0, repeats=1):
  """[P,h,w,C] patches of `image` (a list of `repeats` of them if repeats > 1)."""
  config = PreprocessConfig(splits_per_side=splits, patch_jitter=jitter)
  fn = get_preprocess_fn("crop_patches", is_training, config)
  ds = tf.data.Dataset.from_tensors({"image": image, "label": 0}).repeat(repeats).map(fn)
  out = [example["image"] for example in ds.as_numpy_iterator()]  # graph mode, as get_data
  return out if repeats > 1 else out[0]


@pytest.mark.parametrize("h,w,splits,jitter", [(30, 30, 3, 2), (31, 34, 3, 3), (40, 40, 4, 0)])
def test_eval_patches_are_centred_in_their_cells(h, w, splits, jitter):
  cell_h, cell_w, patch_h, patch_w = patch_geometry(h, w, splits, jitter)
  assert (cell_h, cell_w) == (h // splits, w // splits)
  assert (patch_h, patch_w) == (h // splits - jitter, w // splits - jitter)
  patches = _patches(_coordinate_image(h, w), False, splits, jitter)
  assert patches.shape == (splits * splits, patch_h, patch_w, 3)
  for k, patch in enumerate(patches):  # Row-major order.
    row, col = divmod(k, splits)
    assert patch[0, 0, 0] == row * cell_h + jitter // 2
    assert patch[0, 0, 1] == col * cell_w + jitter // 2
    np.testing.assert_array_equal(np.diff(patch[:, 0, 0]), 1)  # A contiguous crop.


def test_training_jitter_stays_in_the_cell_and_covers_it():
  h = w = 30
  splits, jitter = 3, 4
  cell, _, size, _ = patch_geometry(h, w, splits, jitter)
  offsets = []
  for patches in _patches(_coordinate_image(h, w), True, splits, jitter, repeats=40):
    assert patches.shape == (9, size, size, 3)
    for k, patch in enumerate(patches):
      row, col = divmod(k, splits)
      offsets.append((patch[0, 0, 0] - row * cell, patch[0, 0, 1] - col * cell))
  offsets = np.array(offsets)
  assert offsets.min() == 0 and offsets.max() == jitter
  assert len({tuple(o) for o in offsets[:9]}) > 1  # Patches move independently.


def test_patch_geometry_errors_name_the_values():
  with pytest.raises(ValueError, match=r"30x30 image in a 3x3 grid has 10x10 cells.*"
                                       r"patch_jitter=10"):
    patch_geometry(30, 30, 3, 10)
  fn = get_preprocess_fn("resize_small,crop_patches", False, PreprocessConfig(smaller_size=20))
  with pytest.raises(ValueError, match="needs an image of static size"):
    tf.function(fn).get_concrete_function(
        {"image": tf.TensorSpec([None, None, 3], tf.float32), "label": tf.TensorSpec([], tf.int32)})


def test_the_patch_spec_standardises_each_patch():
  config = PreprocessConfig(resize_size=40, crop_size=36, grayscale_probability=0.66,
                            patch_jitter=2)
  fn = get_preprocess_fn("resize,to_gray,crop,crop_patches,standardization", True, config)
  image = np.random.default_rng(0).uniform(size=(50, 50, 3)).astype(np.float32)
  patches = fn({"image": tf.constant(image), "label": tf.constant(1)})["image"].numpy()
  assert patches.shape == (9, 10, 10, 3)
  np.testing.assert_allclose(patches.mean(axis=(1, 2, 3)), 0, atol=1e-4)
  np.testing.assert_allclose(patches.std(axis=(1, 2, 3)), 1, atol=1e-2)


@pytest.mark.parametrize("splits", [3, 5])
def test_relative_location_labels_match_the_geometry(splits):
  cell = 6
  image = np.repeat(np.repeat(np.arange(splits * splits, dtype=np.float32).reshape(
      splits, splits), cell, 0), cell, 1)[..., None]  # Cell k holds the value k.
  patches = _patches(np.tile(image, [1, 1, 3]), False, splits, 2)[None]  # [1,P,h,w,3]
  centre, neighbours, labels = rpl.centre_neighbour_pairs(tf.constant(patches), splits)
  assert centre.shape[:2] == neighbours.shape[:2] == labels.shape == (1, 8)
  mid = splits // 2
  for j, (dr, dc) in enumerate(rpl.NEIGHBOUR_OFFSETS):
    assert int(labels[0, j]) == j
    assert np.all(centre[0, j].numpy() == mid * splits + mid)
    assert np.all(neighbours[0, j].numpy() == (mid + dr) * splits + mid + dc)
  # Label order is row-major: 0 is up-left, 1 up, 3 left, 4 right, 7 down-right.
  assert rpl.NEIGHBOUR_OFFSETS[0] == (-1, -1) and rpl.NEIGHBOUR_OFFSETS[1] == (-1, 0)
  assert rpl.NEIGHBOUR_OFFSETS[3] == (0, -1) and rpl.NEIGHBOUR_OFFSETS[7] == (1, 1)
  with pytest.raises(ValueError, match="odd splits_per_side >= 3"):
    rpl.patch_indices(4)


def test_head_units_rule():
  assert patch_utils.head_units("resnet50", None) == 4096
  assert patch_utils.head_units("resnet50", 4) == 4096
  assert patch_utils.head_units("resnet50", 16) == 4096
  assert patch_utils.head_units("resnet50", 1) == 1024
  assert patch_utils.head_units("vgg19", 1) == 512


def _task_config(task, **overrides):
  settings = dict(task=task, workdir="/tmp/unused", architecture="resnet50", filters_factor=1,
                  embed_dim=16, preprocessing="crop,crop_patches,standardization",
                  crop_size=(48, 48), num_permutations=10, perm_subset_size=10)
  if task == "exemplar":
    settings.update(preprocessing="resize,exemplar_copies,standardization", resize_size=(32, 32),
                    crop_size=(32, 32), num_of_inception_patches=3)
  settings.update(overrides)
  return Config(**settings)


@pytest.mark.parametrize("task", ["jigsaw", "relative_patch_location", "exemplar"])
def test_a_few_steps_on_a_fixed_batch_lower_the_loss(task, shapes_data_dir, tmp_path,
                                                      monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # The jigsaw permutation cache.
  # VGG19 at width 1 traces fastest; its input must be 32x32 or larger.
  config = _task_config(task, architecture="vgg19", preprocessing="resize,crop_patches",
                        resize_size=(96, 96), crop_size=None)
  if task == "exemplar":
    config = _task_config(task, architecture="vgg19")
  method = methods.get_method(task)
  method.validate(config)
  fn = get_preprocess_fn(config.preprocessing, True, datasets.PreprocessConfig.of(config))
  tf.random.set_seed(0)
  data = datasets.get_data("shapes_small", "train[:6]", is_training=False, preprocess_fn=fn,
                           batch_size=6, data_dir=shapes_data_dir)
  batch = next(iter(data))
  keras.utils.set_random_seed(0)
  model = method.build_model(config, tuple(batch["image"].shape[1:]), 10)
  optimizer = keras.optimizers.Adam(3e-3)
  optimizer.build(model.trainable_variables)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      spec = method.model_fn(model, batch, base.TRAIN, config)
    grads = tape.gradient(spec.loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return spec.loss

  losses = [float(step()) for _ in range(15)]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
  spec = method.model_fn(model, batch, base.EVAL, config)
  assert set(spec.metrics) >= {"loss", "accuracy"}


def test_relative_patch_location_trains_exports_and_serves_single_patches(tmp_path,
                                                                          shapes_data_dir):
  config = _task_config(
      "relative_patch_location", workdir=str(tmp_path / "wd"), dataset="shapes_small",
      data_dir=shapes_data_dir, architecture="vgg19", resize_size=(102, 102),
      crop_size=(102, 102),
      preprocessing="resize,to_gray,crop,crop_patches,standardization", patch_jitter=2,
      grayscale_probability=0.5, batch_size=4, epochs=1, train_split="train[:4]",
      val_split="test[:4]", log_every_steps=1, save_checkpoints_secs=None, run_eval=True)
  results = train_and_eval.run(config, print_fn=lambda _: None)
  assert results["step"] == 1 and 0 <= results["eval_metrics"]["accuracy"] <= 1
  info = export_lib.load_export_info(config.export_dir)
  assert info["eval_preprocessing"] == config.preprocessing
  assert info["input_shape"] == [32, 32, 3]  # 102 // 3 - 2
  assert info["preprocess_config"]["patch_jitter"] == 2
  loaded = tf.saved_model.load(config.export_dir)
  for n in (1, 5):
    out = loaded.signatures["representation"](images=tf.zeros([n, 32, 32, 3]))
    assert set(out) == set(info["end_points"]) and out["pre_logits"].shape[0] == n
    assert loaded.signatures["serving_default"](images=tf.zeros([n, 32, 32, 3]))[
        "logits"].shape == (n, config.embed_dim)
  # Per-layer evaluation input: 9 patches per image, combined per layer.
  representation = loaded.signatures["representation"]
  features = pooling.pooled_features(lambda x: representation(images=x),
                                     tf.zeros([2, 9, 32, 32, 3]), ["block1", "pre_logits"])
  assert features["pre_logits"].shape[0] == 2
  with open(os.path.join(config.workdir, "pretext_results.json")) as f:
    assert json.load(f)["metrics"]["num_examples"] == 4 * 8


_CHECK_FLAGFILES = """
import sys
from absl import flags
import train_and_eval
from training import validation
for path in sys.argv[1:]:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["x", "--flagfile=" + path, "--workdir=/tmp/unused"])
  validation.validate(train_and_eval.config_from_flags(), check_data=False)
"""


def test_the_flagfiles_parse_and_validate():
  paths = [f"configs/{task}/{dataset}.flags" for task in
           ("jigsaw", "relative_patch_location", "exemplar") for dataset in ("imagenet", "shapes")]
  subprocess.run([sys.executable, "-c", _CHECK_FLAGFILES, *paths], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("overrides, message", [
    (dict(splits_per_side=0), r"--splits_per_side must be a positive integer, got 0"),
    (dict(patch_jitter=-1), r"--patch_jitter must be >= 0, got -1"),
    (dict(margin=-0.5), r"--margin must be a number >= 0, got -0.5"),
    (dict(crop_size=(30, 30), patch_jitter=10), r"--crop_size=\[30, 30\]: .*patch_jitter=10"),
    (dict(splits_per_side=4), r"--splits_per_side=4: .*odd splits_per_side >= 3"),
    (dict(preprocessing="crop,standardization"), r"needs the 'crop_patches' op"),
])
def test_bad_patch_settings_fail_validation(overrides, message):
  config = dataclasses.replace(_task_config("relative_patch_location"), **overrides)
  with pytest.raises(ConfigError, match=message):
    validation.validate(config, check_data=False)
