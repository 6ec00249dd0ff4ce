"""Tests of the backbones: end point shapes, parameter counts, modes, validation, BatchNorm."""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import models
from models import revnet
from models import vgg

# (architecture, mode) pairs: mode only matters for resnet50.
VARIANTS = [("resnet50", "v1"), ("resnet50", "v2"), ("revnet50", "v2"), ("vgg19", "v2")]


def _images(batch, height, width=None, seed=0):
  """Random float32 NHWC images."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(batch, height, width or height, 3)).astype("float32")


@functools.lru_cache(maxsize=None)
def _model(arch, mode, filters_factor, num_classes=None, root_conv_stride=2,
           strides=(2, 2, 2), last_relu=True):
  """A cached model (only for tests that do not train it)."""
  keras.utils.set_random_seed(1)
  return models.get_model(arch, num_classes=num_classes, filters_factor=filters_factor,
                          mode=mode, root_conv_stride=root_conv_stride, strides=strides,
                          last_relu=last_relu)


# Expected shapes, computed from the architecture description. ###################


def _resnet_shapes(height, width, ff, root_conv_stride=2, strides=(2, 2, 2)):
  """{end point: shape without batch} for resnet50 / revnet50."""
  h, w = math.ceil(height / root_conv_stride), math.ceil(width / root_conv_stride)
  h, w = math.ceil(h / 2), math.ceil(w / 2)  # 3x3 max-pool, stride 2, SAME
  shapes = {"after_root": (h, w, 16 * ff)}
  for b, s in enumerate((1,) + tuple(strides)):
    h, w = math.ceil(h / s), math.ceil(w / s)
    shapes[f"block{b + 1}"] = (h, w, 64 * ff * 2 ** b)
  shapes["pre_logits"] = (64 * ff * 8,)
  return shapes


def _vgg_shapes(height, width, ff):
  """{end point: shape without batch} for vgg19."""
  h, w, shapes = height, width, {}
  for b, mult in enumerate((1, 2, 4, 8, 8)):
    h, w = h // 2, w // 2
    shapes[f"block{b + 1}"] = (h, w, 8 * ff * mult)
  shapes["fc6"] = (1, 1, 512 * ff)  # kernel min(7, map) for maps up to 7x7
  shapes["pre_logits"] = (512 * ff,)
  return shapes


def _expected_shapes(arch, height, width, ff, **kwargs):
  if arch == "vgg19":
    return _vgg_shapes(height, width, ff)
  return _resnet_shapes(height, width, ff, **kwargs)


# Parameter counts derived by hand. ##############################################
# `bn` is the count per BatchNorm channel: 4 (gamma, beta, moving mean and variance) for
# all weights, 2 for the trainable ones only.


def _resnet50_params(ff, mode, num_classes, bn=4, in_channels=3):
  root = 16 * ff
  n = 7 * 7 * in_channels * root + (bn * root if mode == "v1" else 0)
  c_in = root
  for b, units in enumerate((3, 4, 6, 3)):
    out = 64 * ff * 2 ** b
    w = out // 4
    for u in range(units):
      n += c_in * w + 9 * w * w + w * out  # conv1, conv2, conv3
      if mode == "v1":
        n += bn * (w + w + out)  # after each conv
        if u == 0:
          n += c_in * out + bn * out  # projection conv + BN
      else:
        n += bn * (c_in + w + w)  # pre-activation BN, then before conv2 and conv3
        if u == 0:
          n += c_in * out  # projection conv
      c_in = out
  if mode == "v2":
    n += bn * c_in  # final BN before pooling
  if num_classes:
    n += c_in * num_classes + num_classes
  return n


def _revnet50_params(ff, num_classes, bn=4, in_channels=3):
  root = 16 * ff
  n = 7 * 7 * in_channels * root
  c_in = root
  for b, units in enumerate((3, 4, 6, 3)):
    out = 64 * ff * 2 ** b
    w = out // 4
    # Transition: pre-activation bottleneck with projection.
    n += bn * c_in + c_in * out + c_in * w + bn * w + 9 * w * w + bn * w + w * out
    half = out // 2
    hw = half // 4
    residual_fn = bn * half + half * hw + bn * hw + 9 * hw * hw + bn * hw + hw * half
    n += (units - 1) * 2 * residual_fn  # F and G
    c_in = out
  n += bn * c_in
  if num_classes:
    n += c_in * num_classes + num_classes
  return n


def _vgg19_params(ff, num_classes, fc6_kernel, bn=4, in_channels=3):
  n, c_in = 0, in_channels
  for convs, mult in zip((2, 2, 4, 4, 4), (1, 2, 4, 8, 8)):
    c = 8 * ff * mult
    for _ in range(convs):
      n += 9 * c_in * c + bn * c
      c_in = c
  fc = 512 * ff
  n += fc6_kernel[0] * fc6_kernel[1] * c_in * fc + bn * fc  # fc6
  n += fc * fc + bn * fc  # fc7
  if num_classes:
    n += fc * num_classes + num_classes
  return n


def _trainable_count(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def _expected_params(arch, mode, ff, num_classes, fc6_kernel, bn=4):
  if arch == "resnet50":
    return _resnet50_params(ff, mode, num_classes, bn=bn)
  if arch == "revnet50":
    return _revnet50_params(ff, num_classes, bn=bn)
  return _vgg19_params(ff, num_classes, fc6_kernel, bn=bn)


def _batch_norms(model):
  return [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]


# Tests. #########################################################################


@pytest.mark.parametrize("arch,mode", VARIANTS)
@pytest.mark.parametrize("ff", [1, 2])
def test_end_point_shapes_and_params(arch, mode, ff):
  model = _model(arch, mode, ff, num_classes=7)
  for batch in (1, 3):
    out = model(_images(batch, 64), training=False)
    assert list(out) == models.end_point_names(arch, with_logits=True)
    expected = _expected_shapes(arch, 64, 64, ff)
    for name, shape in expected.items():
      assert tuple(out[name].shape) == (batch,) + shape, name
      assert out[name].dtype == "float32"
    assert tuple(out["logits"].shape) == (batch, 7)
  # Parameters (the final map of a 64x64 input is 2x2 in VGG, hence a 2x2 fc6 kernel).
  assert model.count_params() == _expected_params(arch, mode, ff, 7, (2, 2))
  assert _trainable_count(model) == _expected_params(arch, mode, ff, 7, (2, 2), bn=2)
  # No regularizers in the layers, biases only in the logits layer, BN as configured.
  assert not model.losses
  assert {v.name for v in model.trainable_variables} == {"kernel", "bias", "gamma", "beta"}
  assert [v.path for v in model.variables if v.name == "bias"] == [f"{arch}/logits/bias"]
  bns = _batch_norms(model)
  assert bns and all(
      bn.momentum == 0.9 and bn.epsilon == 1e-5 and not bn.synchronized for bn in bns)


@pytest.mark.parametrize("arch,mode", [("resnet50", "v2"), ("revnet50", "v2")])
def test_patch_variant_strides_without_head_non_square(arch, mode):
  kwargs = dict(root_conv_stride=1, strides=(2, 2, 1))
  model = _model(arch, mode, 1, **kwargs)
  out = model(_images(2, 48, 40), training=False)
  assert list(out) == models.end_point_names(arch)
  expected = _resnet_shapes(48, 40, 1, **kwargs)
  assert expected["after_root"] == (24, 20, 16) and expected["block4"] == (6, 5, 512)
  for name, shape in expected.items():
    assert tuple(out[name].shape) == (2,) + shape, name


def test_vgg_without_head_non_square():
  model = models.get_model("vgg19", filters_factor=1)
  out = model(_images(2, 96, 64), training=False)
  assert list(out) == models.end_point_names("vgg19")
  assert model.fc6.conv.kernel_size == (3, 2)
  for name, shape in _vgg_shapes(96, 64, 1).items():
    assert tuple(out[name].shape) == (2,) + shape, name


def test_resnet50_v1_param_count_standard_width():
  model = models.get_model("resnet50", num_classes=1000, mode="v1")  # filters_factor 4
  model.build((None, 224, 224, 3))
  assert model.count_params() == _resnet50_params(4, "v1", 1000)
  # Without BN moving statistics this is the well-known ResNet-50 count.
  assert _trainable_count(model) == _resnet50_params(4, "v1", 1000, bn=2) == 25_557_032
  assert model.count_params() == 25_557_032 + 2 * 26_560  # 26,560 BN channels


def test_vgg19_param_count_standard_width():
  # Built for 32x32 inputs, so fc6 is 1x1 (building for 224x224 allocates 143M weights).
  model = models.get_model("vgg19", num_classes=1000)  # filters_factor 8
  model.build((None, 32, 32, 3))
  assert model.fc6.conv.kernel_size == (1, 1)
  assert model.count_params() == _vgg19_params(8, 1000, (1, 1))
  assert _trainable_count(model) == _vgg19_params(8, 1000, (1, 1), bn=2)
  # For 224x224 inputs fc6 is 7x7; classic VGG19 has 143,667,240 weights with biases, and
  # here BN (4 per channel) replaces the biases of the convs and of fc6 and fc7.
  biases = 64 * 2 + 128 * 2 + 256 * 4 + 512 * 8 + 4096 * 2 + 1000
  assert _vgg19_params(8, 1000, (7, 7)) == 143_667_240 + 4 * (biases - 1000) + 1000 - biases


def test_mode_is_ignored_by_revnet_and_vgg():
  for arch in ("revnet50", "vgg19"):
    model = models.get_model(arch, filters_factor=1, mode="v1")
    model.build((None, 32, 32, 3))
    assert model.count_params() == _expected_params(arch, "v2", 1, None, (1, 1))


def test_v1_and_v2_differ():
  v1 = _model("resnet50", "v1", 1, num_classes=7)
  v2 = _model("resnet50", "v2", 1, num_classes=7)
  v1(_images(1, 32)), v2(_images(1, 32))
  v1_paths = [v.path for v in v1.variables]
  v2_paths = [v.path for v in v2.variables]
  # v2: a final BN before pooling, no BN after the root conv; v1 the other way round.
  assert any("final_bn" in p for p in v2_paths)
  assert not any("final_bn" in p for p in v1_paths)
  assert any(p.startswith("resnet50/root/bn/") for p in v1_paths)
  assert not any(p.startswith("resnet50/root/bn/") for p in v2_paths)
  # v2 units start with a pre-activation BN over their input.
  assert any("block1_unit1/preact_bn" in p for p in v2_paths)
  assert not any("preact_bn" in p for p in v1_paths)


@pytest.mark.parametrize("arch,mode", VARIANTS[:3])
def test_last_relu(arch, mode):
  images = _images(4, 32, seed=3)
  with_relu = _model(arch, mode, 1, num_classes=7)(images, training=False)["pre_logits"]
  without = _model(arch, mode, 1, last_relu=False)(images, training=False)["pre_logits"]
  assert np.min(with_relu) >= 0.0
  assert np.min(without) < 0.0


def test_vgg_fc6_kernel_follows_input_size():
  assert vgg.fc6_kernel_size(32, 32) == (1, 1)
  assert vgg.fc6_kernel_size(63, 64) == (1, 2)
  assert vgg.fc6_kernel_size(96, 64) == (3, 2)
  assert vgg.fc6_kernel_size(224, 224) == (7, 7)
  assert vgg.fc6_kernel_size(320, 255) == (7, 7)
  assert vgg.fc6_kernel_size(None, None) == (7, 7)
  with pytest.raises(ValueError, match="32x32"):
    vgg.fc6_kernel_size(16, 32)
  model = models.get_model("vgg19", filters_factor=1, num_classes=5)
  model.build((None, 224, 224, 3))
  assert model.fc6.conv.kernel_size == (7, 7)
  assert model.count_params() == _vgg19_params(1, 5, (7, 7))
  model.build((None, 32, 32, 3))  # building again changes nothing
  assert model.fc6.conv.kernel_size == (7, 7)
  # A larger input than the build size gives a spatial fc6; a smaller one is refused.
  model = models.get_model("vgg19", filters_factor=1)
  model(_images(1, 64), training=False)
  assert tuple(model(_images(1, 128), training=False)["fc6"].shape) == (1, 3, 3, 512)
  with pytest.raises(ValueError, match="fc6"):
    model(_images(1, 32), training=False)


def _unprojected_units(model):
  """The residual units whose shortcut is the identity."""
  return [u for u in model._units() if getattr(u, "proj", None) is None]  # pylint: disable=protected-access


@pytest.mark.parametrize("arch,mode", VARIANTS)
def test_zero_init_residual_starts_units_as_their_shortcut(arch, mode):
  """Every unit without a projection is the identity at init (v1: ReLU of it), in training and
  inference mode; the standard init is not; VGG has no residual branches and is unchanged."""
  keras.utils.set_random_seed(5)
  model = models.get_model(arch, mode=mode, filters_factor=1, zero_init_residual=True)
  images = _images(2, 32, seed=4)
  out = model(images, training=True)
  if arch == "vgg19":
    keras.utils.set_random_seed(5)
    plain = models.get_model(arch, mode=mode, filters_factor=1)(images, training=True)
    np.testing.assert_allclose(out["pre_logits"], plain["pre_logits"], rtol=1e-5, atol=1e-5)
    return
  unprojected = _unprojected_units(model)
  assert len(unprojected) == 16 - 4  # 3 + 4 + 6 + 3 units, the first of each block projects.
  rng = np.random.default_rng(1)
  for unit in unprojected:
    channels = unit.filters if arch == "revnet50" else unit.conv3.filters
    x = rng.normal(size=(2, 4, 4, channels)).astype("float32")
    for training in (True, False):
      expected = np.maximum(x, 0) if mode == "v1" else x
      np.testing.assert_allclose(unit(x, training=training), expected, atol=1e-6)
  keras.utils.set_random_seed(5)
  standard = models.get_model(arch, mode=mode, filters_factor=1)
  standard(images, training=False)
  unit = _unprojected_units(standard)[0]
  channels = unit.filters if arch == "revnet50" else unit.conv3.filters
  x = rng.normal(size=(2, 4, 4, channels)).astype("float32")
  assert np.max(np.abs(np.asarray(unit(x, training=False)) - x)) > 0.1


def test_reversible_unit_is_invertible():
  keras.utils.set_random_seed(2)
  unit = revnet.ReversibleUnit(32, bn_momentum=0.9, sync_bn=False)
  unit.build((None, 8, 8, 32))
  # Non-trivial BN parameters and statistics, so that F and G are not near identity maps.
  rng = np.random.default_rng(0)
  for v in unit.variables:
    if v.name in ("gamma", "moving_variance"):
      v.assign(rng.uniform(0.5, 1.5, size=v.shape).astype("float32"))
    elif v.name in ("beta", "moving_mean"):
      v.assign(rng.normal(0.0, 0.5, size=v.shape).astype("float32"))
  x = rng.normal(size=(3, 8, 8, 32)).astype("float32")
  y = unit(x, training=False)
  assert np.max(np.abs(np.asarray(y) - x)) > 0.1  # F and G do something
  x_rec = unit.inverse(y, training=False)
  np.testing.assert_allclose(np.asarray(x_rec), x, atol=1e-5, rtol=0)


def test_batchnorm_training_updates_statistics_and_inference_is_deterministic():
  keras.utils.set_random_seed(4)
  model = models.get_model("vgg19", filters_factor=1, bn_momentum=0.5, sync_bn=True)
  images = _images(2, 32, seed=5)
  first = model(images, training=False)
  bns = _batch_norms(model)
  assert len(bns) == 18 and all(
      bn.momentum == 0.5 and bn.epsilon == 1e-5 and bn.synchronized for bn in bns)
  moving = {v.path: np.array(v) for v in model.non_trainable_variables}
  assert len(moving) == 2 * len(bns)
  assert all(p.split("/")[-1] in ("moving_mean", "moving_variance") for p in moving)
  again = model(images, training=False)
  for name in first:
    np.testing.assert_array_equal(np.asarray(first[name]), np.asarray(again[name]))
  assert all(np.array_equal(np.array(v), moving[v.path]) for v in model.non_trainable_variables)
  model(images, training=True)  # synchronized BN also runs without a distribution strategy
  for v in model.non_trainable_variables:
    assert not np.allclose(np.array(v), moving[v.path]), v.path
  # Training mode normalises with batch statistics: it differs from inference mode.
  trained = model(images, training=True)["pre_logits"]
  assert not np.allclose(np.asarray(trained), np.asarray(first["pre_logits"]))


@pytest.mark.parametrize("arch", ["resnet50", "revnet50", "vgg19"])
def test_tf_checkpoint_holds_every_variable(arch, tmp_path):
  mode = "v1" if arch == "resnet50" else "v2"
  model = _model(arch, mode, 1, num_classes=7)  # built by the shape test or here
  model.build((None, 64, 64, 3))
  path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
  assert len(saved) == len(model.variables)
  if arch == "revnet50":  # the most nested model: restore it and compare outputs
    images = _images(2, 64)
    restored = models.get_model(arch, filters_factor=1, num_classes=7)
    restored.build((None, 64, 64, 3))
    tf.train.Checkpoint(model=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(np.asarray(model(images)["logits"]),
                                  np.asarray(restored(images)["logits"]))


def test_defaults_and_end_point_names():
  assert sorted(models.ARCHITECTURES.names()) == ["resnet50", "revnet50", "vgg19", "vit"]
  assert models.default_filters_factor("resnet50") == 4
  assert models.default_filters_factor("revnet50") == 4
  assert models.default_filters_factor("vgg19") == 8
  assert models.default_weight_decay("resnet50") == 1e-4
  assert models.default_weight_decay("revnet50") == 1e-4
  assert models.default_weight_decay("vgg19") == 5e-4
  resnet_names = ["after_root", "block1", "block2", "block3", "block4", "pre_logits"]
  assert models.end_point_names("resnet50") == resnet_names
  assert models.end_point_names("revnet50", with_logits=True) == resnet_names + ["logits"]
  assert models.end_point_names("vgg19") == [
      "block1", "block2", "block3", "block4", "block5", "fc6", "pre_logits"]


def test_unknown_architecture_and_mode():
  with pytest.raises(ValueError) as err:
    models.get_model("resnet51")
  assert "resnet51" in str(err.value)
  assert "resnet50, revnet50, vgg19, vit" in str(err.value)
  with pytest.raises(ValueError, match="resnet51"):
    models.end_point_names("resnet51")
  for arch in ("resnet50", "revnet50", "vgg19"):
    with pytest.raises(ValueError) as err:
      models.get_model(arch, mode="v3")
    assert "'v3'" in str(err.value) and "v1, v2" in str(err.value)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(filters_factor=0), "filters_factor"),
    (dict(filters_factor=1.5), "filters_factor"),
    (dict(filters_factor=True), "filters_factor"),
    (dict(strides=(2, 2)), "strides"),
    (dict(strides=(2, 3, 2)), "strides"),
    (dict(strides=2), "strides"),
    (dict(root_conv_stride=4), "root_conv_stride"),
    (dict(num_classes=0), "num_classes"),
    (dict(bn_momentum=1.0), "bn_momentum"),
])
def test_invalid_arguments(kwargs, pattern):
  with pytest.raises(ValueError, match=pattern):
    models.get_model("resnet50", **kwargs)
