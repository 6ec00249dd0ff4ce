"""The plan's estimates (training/footprint.py, eval/linear_eval.footprint) against what real runs
hold and write (bench/footprint.py's cases): the growth of the peak resident memory between two
sizes of a pretext run and of the cached probes, and the bytes of the export, the checkpoint and
the feature cache they wrote. Each estimate is within 25% of its measurement."""

import glob
import math
import os

import pytest

from bench import footprint as bench

TOLERANCE = 0.25


def _size(pattern):
  return sum(os.path.getsize(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))


def _within(estimate, measured):
  return abs(estimate - measured) <= TOLERANCE * measured


@pytest.mark.parametrize("case", [
    # ResNet-50 v1 (90 s in bfloat16 on a CPU) in the slow tier; VGG19 stands for float32.
    pytest.param(c, marks=[pytest.mark.slow] if "resnet50_v1" in c else [])
    for c in bench.CASES if c.startswith("training")])
def test_a_training_steps_memory_per_image_and_its_files_are_as_estimated(
    case, shapes_data_dir, tmp_path):
  from training import footprint  # pylint: disable=g-import-not-at-top
  results = bench.measure(case, shapes_data_dir, str(tmp_path))
  measured, estimated = bench.growth(case, results)
  assert measured > 2 ** 28 and _within(estimated, measured), (estimated, measured)

  # What it wrote: the export's variables, and its last checkpoint (weights and Adam's slots).
  step, _ = results[32]
  assert _within(footprint.checkpoint_bytes(step.params, None),
                 _size(f"{tmp_path}/32/export/variables/*"))
  index = sorted(glob.glob(f"{tmp_path}/32/checkpoints/*.index"))[-1]
  assert _within(footprint.checkpoint_bytes(step.params, "adam"),
                 _size(index.replace(".index", ".data-*")))


@pytest.mark.slow
def test_the_cached_probes_memory_does_not_grow_with_their_features_on_disk(shapes_data_dir,
                                                                           tmp_path):
  """4x the training examples: the store on disk grows as estimated, the peak memory (within its
  budget) by less than a tenth of that, and the estimate not at all."""
  case = next(c for c in bench.CASES if c.startswith("cached probes"))
  results = bench.measure(case, shapes_data_dir, str(tmp_path))
  measured, estimated = bench.growth(case, results)
  features = bench.feature_growth(results)
  assert features > 2 ** 28 and measured < 0.1 * features and estimated == 0, (
      measured, estimated, features)
  large, _ = results[8000]
  assert _within(large.disk_bytes, _size(f"{tmp_path}/8000/feature_cache/**/*.bin"))


@pytest.mark.parametrize("architecture", ["resnet50", "revnet50", "vgg19"])
def test_a_model_measured_at_widths_1_and_2_has_every_widths_parameters_and_end_points(
    architecture):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top
  from training import footprint  # pylint: disable=g-import-not-at-top

  def build(width):
    model = models.get_model(architecture, num_classes=10, filters_factor=width)
    model(tf.zeros([1, 32, 32, 3]), training=False)
    return model

  backbone = footprint.measure(("test", architecture), build, (32, 32, 3), "float32")
  model = build(3)
  assert backbone.params(3) == model.count_params()
  assert backbone.end_points(3) == {k: tuple(v.shape[1:]) for k, v in model(
      tf.zeros([1, 32, 32, 3]), training=False).items()}
  # Kept for the backward pass: more than the end points, and the input's bytes (padded for
  # ResNet's first convolution: 38x38) at every width.
  ends = sum(4 * math.prod(s) for s in backbone.end_points(1).values())
  assert backbone.kept_bytes(1) > ends
  assert backbone.input_bytes_per_image in (32 * 32 * 3 * 4, 38 * 38 * 3 * 4)
  assert backbone.kept_bytes(3) - backbone.kept_bytes(2) == (
      backbone.kept_bytes(2) - backbone.kept_bytes(1))
