"""Tests of the preprocessing ops and spec validation (datasets/preprocess.py)."""

import numpy as np
import pytest
import tensorflow as tf

from datasets import PREPROCESS_OPS, PreprocessConfig, get_preprocess_fn, validate_spec

H, W = 40, 30
CONFIG = PreprocessConfig(resize_size=(20, 16), smaller_size=24, crop_size=12,
                          grayscale_probability=0.5)


def _image(h=H, w=W, seed=0):
  return np.random.RandomState(seed).uniform(size=(h, w, 3)).astype(np.float32)


def _apply(spec, image, is_training, config=CONFIG, label=7):
  fn = get_preprocess_fn(spec, is_training, config)
  out = fn({"image": tf.constant(image), "label": tf.constant(label, tf.int32)})
  return {k: v.numpy() for k, v in out.items()}


def _apply_in_dataset(spec, image, is_training, config=CONFIG, n=1):
  """Runs the ops in graph mode, as get_data does."""
  fn = get_preprocess_fn(spec, is_training, config)
  ds = tf.data.Dataset.from_tensors({"image": image, "label": 3}).repeat(n).map(fn)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("spec,is_training,shape,lo,hi", [
    ("resize", True, (20, 16, 3), 0, 1),
    ("resize_small", False, (32, 24, 3), 0, 1),
    ("crop", True, (12, 12, 3), 0, 1),
    ("crop", False, (12, 12, 3), 0, 1),
    ("central_crop", True, (12, 12, 3), 0, 1),
    ("inception_crop", True, (12, 12, 3), 0, 1),
    ("inception_crop", False, (12, 12, 3), 0, 1),
    ("inception_preprocess", True, (12, 12, 3), -1, 1),
    ("inception_preprocess", False, (12, 12, 3), -1, 1),
    ("flip_lr", True, (H, W, 3), 0, 1),
    ("to_gray", True, (H, W, 3), 0, 1),
    ("-1_to_1", False, (H, W, 3), -1, 1),
    ("0_to_1", False, (H, W, 3), 0, 1),
    ("resize,to_gray,crop,flip_lr,-1_to_1", True, (12, 12, 3), -1, 1),
    ("crop,rotate", True, (4, 12, 12, 3), 0, 1),
    ("inception_preprocess,rotate", True, (4, 12, 12, 3), -1, 1),
])
def test_op_shape_and_range(spec, is_training, shape, lo, hi):
  for out in (_apply(spec, _image(), is_training),
              _apply_in_dataset(spec, _image(), is_training)[0]):
    assert out["image"].shape == shape
    assert out["image"].dtype == np.float32
    assert lo - 1e-5 <= out["image"].min() and out["image"].max() <= hi + 1e-5


def test_static_shapes_for_batching():
  fn = get_preprocess_fn("inception_crop,rotate", True, CONFIG)
  ds = tf.data.Dataset.from_tensors({"image": _image(), "label": 0}).map(
      lambda ex: {**ex, "image": tf.ensure_shape(ex["image"], [None, None, 3])}).map(fn)
  assert ds.element_spec["image"].shape.as_list() == [4, 12, 12, 3]


def test_value_ops():
  image = _image() * 2 - 0.5  # Values outside [0, 1].
  np.testing.assert_allclose(_apply("0_to_1", image, True)["image"], np.clip(image, 0, 1))
  image = _image()
  np.testing.assert_allclose(_apply("-1_to_1", image, True)["image"], image * 2 - 1, atol=1e-6)


def test_rotate_is_exact():
  image = _image(16, 16)
  out = _apply("rotate", image, True, label=5)
  assert out["image"].shape == (4, 16, 16, 3)
  for k in range(4):
    np.testing.assert_array_equal(out["image"][k], np.rot90(image, k, axes=(0, 1)))
  np.testing.assert_array_equal(out["label"], [0, 1, 2, 3])
  assert out["label"].dtype == np.int32
  assert out["class_label"] == 5
  # The same in graph mode.
  ds_out = _apply_in_dataset("rotate", image, False)[0]
  np.testing.assert_array_equal(ds_out["image"][1], np.rot90(image, 1, axes=(0, 1)))


def test_rotate_needs_a_square():
  with pytest.raises(ValueError, match="square"):
    _apply("rotate", _image(), True)
  with pytest.raises(tf.errors.InvalidArgumentError, match="square"):
    fn = get_preprocess_fn("rotate", True, CONFIG)
    ds = tf.data.Dataset.from_generator(
        lambda: iter([_image()]), output_signature=tf.TensorSpec([None, None, 3], tf.float32))
    list(ds.map(lambda image: fn({"image": image, "label": 0})))


def test_crop_is_central_in_eval():
  image = _image()
  top, left = (H - 12) // 2, (W - 12) // 2
  for spec in ("crop", "central_crop"):
    np.testing.assert_array_equal(_apply(spec, image, False)["image"],
                                  image[top:top + 12, left:left + 12])
  np.testing.assert_array_equal(_apply("central_crop", image, True)["image"],
                                image[top:top + 12, left:left + 12])


def test_crop_is_random_and_inside_in_training():
  # Pixel values encode their position, so each crop tells where it was taken.
  yy, xx = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
  image = np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.float32)
  corners = set()
  for out in _apply_in_dataset("crop", image, True, n=30):
    crop = out["image"]
    top, left = int(crop[0, 0, 0]), int(crop[0, 0, 1])
    assert 0 <= top <= H - 12 and 0 <= left <= W - 12
    np.testing.assert_array_equal(crop, image[top:top + 12, left:left + 12])
    corners.add((top, left))
  assert len(corners) > 5


def test_crop_larger_than_image_is_a_clear_error():
  with pytest.raises(tf.errors.InvalidArgumentError, match="smaller than crop_size"):
    _apply("crop", _image(8, 8), True)


def test_inception_crop():
  image = _image()
  config = PreprocessConfig(crop_size=(10, 14), central_crop_fraction=0.5)
  outs = _apply_in_dataset("inception_crop", image, True, config, n=10)
  assert all(o["image"].shape == (10, 14, 3) for o in outs)
  assert len({o["image"].tobytes() for o in outs}) > 1  # Random.
  expected = tf.image.resize(tf.image.central_crop(image, 0.5), (10, 14)).numpy()
  np.testing.assert_allclose(_apply("inception_crop", image, False, config)["image"], expected,
                             atol=1e-6)


def test_flip_lr():
  image = _image()
  np.testing.assert_array_equal(_apply("flip_lr", image, False)["image"], image)
  seen = set()
  for out in _apply_in_dataset("flip_lr", image, True, n=20):
    if np.array_equal(out["image"], image):
      seen.add("same")
    else:
      np.testing.assert_array_equal(out["image"], image[:, ::-1])
      seen.add("flipped")
  assert seen == {"same", "flipped"}


def _is_gray(image):
  return np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 0], image[..., 2])


def test_to_gray():
  image = _image()
  always = PreprocessConfig(grayscale_probability=1.0)
  for training in (True, False):
    out = _apply("to_gray", image, training, always)["image"]
    assert out.shape == (H, W, 3) and _is_gray(out)
  # Probability 0.5: identity in eval, a mix in training.
  np.testing.assert_array_equal(_apply("to_gray", image, False)["image"], image)
  grays = [_is_gray(o["image"]) for o in _apply_in_dataset("to_gray", image, True, n=30)]
  assert 0 < sum(grays) < 30
  # On a stack of copies, too.
  stack = np.stack([image, image])
  assert _is_gray(_apply("to_gray", stack, True, always)["image"])


def test_standardization_per_image_and_per_patch():
  out = _apply("standardization", _image(), True)["image"]
  np.testing.assert_allclose([out.mean(), out.std()], [0, 1], atol=1e-4)
  patches = np.stack([_image(seed=1) * 0.1, _image(seed=2) * 5 + 3, _image(seed=3)])
  out = _apply("standardization", patches, True)["image"]
  assert out.shape == patches.shape
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0, atol=1e-4)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1, atol=1e-4)


def test_unknown_op_lists_valid_ops():
  with pytest.raises(ValueError) as e:
    validate_spec("resize,sharpen", CONFIG)
  message = str(e.value)
  assert "'sharpen'" in message
  for name in PREPROCESS_OPS.names():
    assert name in message


def test_missing_parameter_names_op_and_parameter():
  with pytest.raises(ValueError, match="'crop' needs crop_size"):
    get_preprocess_fn("crop", True, PreprocessConfig())
  with pytest.raises(ValueError, match="'resize_small' needs smaller_size"):
    validate_spec("resize_small,flip_lr", PreprocessConfig(crop_size=4))


def test_geometric_op_after_stacking_is_rejected():
  with pytest.raises(ValueError, match="'crop'.*'rotate'"):
    validate_spec("rotate,crop", CONFIG)
  with pytest.raises(ValueError, match="'flip_lr'"):
    validate_spec("resize,rotate,flip_lr", CONFIG)
  assert validate_spec("resize,rotate,standardization,-1_to_1", CONFIG) == [
      "resize", "rotate", "standardization", "-1_to_1"]


def test_empty_spec_and_bad_config():
  assert validate_spec("", CONFIG) == []
  image = _image()
  np.testing.assert_array_equal(_apply("", image, True)["image"], image)
  with pytest.raises(ValueError, match="empty op name"):
    validate_spec("resize,,crop", CONFIG)
  with pytest.raises(ValueError, match="grayscale_probability"):
    PreprocessConfig(grayscale_probability=1.5)
  with pytest.raises(ValueError, match="crop_size"):
    PreprocessConfig(crop_size=(3, 0))


def test_spec_text_ops_and_patches():
  from core import specs  # pylint: disable=g-import-not-at-top
  assert specs.parse_spec(" resize , crop_patches,standardization") == [
      "resize", "crop_patches", "standardization"]
  assert specs.parse_spec("") == [] and specs.parse_spec("  ") == []
  assert specs.makes_patches("to_gray,crop,crop_patches,standardization")
  assert not specs.makes_patches("resize,-1_to_1,rotate")
  assert not specs.makes_patches("crop_patches_x")  # Whole names only.
  with pytest.raises(ValueError, match="'resize,,crop' has an empty op name"):
    specs.makes_patches("resize,,crop")
  with pytest.raises(ValueError, match="empty op name"):
    validate_spec("resize,", CONFIG)  # The same parser behind the op registry.


def test_evaluation_input_drops_the_ops_that_make_pretext_examples():
  from core import specs  # pylint: disable=g-import-not-at-top
  assert specs.representation_spec("resize,flip_lr,-1_to_1,rotate") == "resize,flip_lr,-1_to_1"
  assert specs.representation_spec("resize,exemplar_copies,standardization") == (
      "resize,standardization")
  assert specs.representation_spec("resize,simclr_views,-1_to_1") == "resize,-1_to_1"
  patches = "resize,to_gray,crop,crop_patches,standardization"
  assert specs.representation_spec(patches) == patches  # Patch labels come from model_fn.
  assert specs.representation_spec("resize,-1_to_1,mask_region") == "resize,-1_to_1"
  # Each of them is a registered op that stacks copies of the image or adds per-pixel targets.
  image = tf.constant(_image(32, 32))
  for name in specs.PRETEXT_OPS:
    if not PREPROCESS_OPS.get(name).stacks:
      out = get_preprocess_fn(name, True, PreprocessConfig())({"image": image, "label": 0})
      assert out["target"].shape[:2] == (32, 32), name
  # The parameters an evaluation takes are PreprocessConfig's fields.
  fields = set(PreprocessConfig.__dataclass_fields__)
  assert set(specs.EVAL_PARAM_FLAGS) <= fields and set(specs.SIZE_FLAGS) <= set(
      specs.EVAL_PARAM_FLAGS)


def test_deterministic_spec_drops_exactly_the_ops_that_act_only_in_training():
  from core import specs  # pylint: disable=g-import-not-at-top
  image = _image()
  always_gray = PreprocessConfig(grayscale_probability=1.0)
  for name in specs.TRAINING_ONLY_OPS:
    # Identity in a deterministic pass, at a probability below 1 ...
    np.testing.assert_array_equal(_apply(name, image, False)["image"], image)
    # ... but not in training: some of 16 seeded draws changes the image.
    changed = [not np.array_equal(_apply_in_dataset(name, image, True, n=16)[i]["image"], image)
               for i in range(16)]
    assert any(changed), name
  # At probability 1 to_gray greys the evaluation images too, and stays in the spec.
  grey = _apply("to_gray", image, False, always_gray)["image"]
  assert not np.allclose(grey, image) and np.allclose(grey[..., 0], grey[..., 2])
  assert specs.deterministic_spec("resize,flip_lr,-1_to_1", 0.0) == "resize,-1_to_1"
  patches = "to_gray,crop,flip_lr,crop_patches,standardization"
  assert specs.deterministic_spec(patches, 0.66) == "crop,crop_patches,standardization"
  assert specs.deterministic_spec(patches, 1.0) == "to_gray,crop,crop_patches,standardization"
  # Every other op does something in a deterministic pass (here on a 40x30 image with values
  # in [-0.5, 1.5]: the crops, resizes and patches change its shape, the value maps its values).
  wide = image * 2.0 - 0.5
  sizes = PreprocessConfig(resize_size=(20, 16), smaller_size=24, crop_size=12, splits_per_side=2)
  for name in PREPROCESS_OPS.names():
    if name not in specs.TRAINING_ONLY_OPS and name not in specs.PRETEXT_OPS:
      out = _apply(name, wide, False, sizes)["image"]
      assert out.shape != wide.shape or not np.allclose(out, wide), name


def test_an_op_changes_with_no_parameter_but_those_it_is_said_to_read():
  """core/specs.PARAM_READERS, against the ops: changing any other parameter of
  EVAL_PARAM_FLAGS leaves an op's output as it is, in the deterministic pass and, with the same
  seed, in training."""
  from core import specs  # pylint: disable=g-import-not-at-top
  image = _image() * 2.0 - 0.5
  base = dict(resize_size=(20, 16), smaller_size=24, crop_size=12, grayscale_probability=0.5,
              splits_per_side=2, patch_jitter=2)
  other = dict(resize_size=(18, 14), smaller_size=22, crop_size=10, grayscale_probability=0.8,
               splits_per_side=3, patch_jitter=1)
  assert set(base) == set(other) == set(specs.EVAL_PARAM_FLAGS) == set(specs.PARAM_READERS)

  def run(name, is_training, config):
    tf.random.set_seed(5)
    return _apply_in_dataset(name, image, is_training, config, n=2)

  read = 0
  for name in PREPROCESS_OPS.names():
    if name in specs.PRETEXT_OPS:
      continue
    before = {t: run(name, t, PreprocessConfig(**base)) for t in (False, True)}
    for param in specs.EVAL_PARAM_FLAGS:
      if name in specs.PARAM_READERS[param]:
        read += 1
        continue
      changed = PreprocessConfig(**dict(base, **{param: other[param]}))
      for is_training in (False, True):
        for a, b in zip(before[is_training], run(name, is_training, changed)):
          np.testing.assert_array_equal(a["image"], b["image"], err_msg=f"{name} {param}")
  assert read == sum(len(ops) for ops in specs.PARAM_READERS.values())


def test_simclr_views_with_local_crops_adds_small_views_that_value_ops_reach():
  config = PreprocessConfig(crop_size=16, local_crops=3, local_crop_size=(8, 6),
                            blur_probability=0.5)
  out = _apply_in_dataset("simclr_views,-1_to_1", _image(32, 32), True, config)[0]
  assert out["image"].shape == (2, 16, 16, 3) and out["local_views"].shape == (3, 8, 6, 3)
  # -1_to_1 after the op maps both from [0, 1]: a local view of this uniform-noise image has
  # values below 0.
  assert out["local_views"].min() < -0.5 and out["local_views"].max() <= 1.0
  assert out["label"] == 3
  # Without local crops the op is the two views alone.
  two = _apply_in_dataset("simclr_views", _image(32, 32), True, PreprocessConfig(crop_size=16))
  assert set(two[0]) == {"image", "label"}


def test_local_views_cover_their_share_of_the_image():
  from datasets import preprocess  # pylint: disable=g-import-not-at-top
  tf.random.set_seed(0)
  shares = []
  for _ in range(200):
    _, size = preprocess._inception_window(tf.constant([120, 90, 3]), True, 1.0, 0.05, 0.14)
    shares.append(float(np.prod(size.numpy())) / (120 * 90))
  shares = np.array(shares)
  fallback = shares == 1.0  # Where 10 attempts found no box, the whole image (TF's behaviour).
  assert fallback.mean() < 0.05
  # Integer sides round the area by up to a side's pixel each way.
  assert shares[~fallback].min() >= 0.05 * 0.95 and shares[~fallback].max() <= 0.14 * 1.05
  assert shares[~fallback].max() > 0.12 and shares[~fallback].min() < 0.07


@pytest.mark.parametrize("fields,message", [
    (dict(local_crops=2), "local_crops=2 needs local_crop_size"),
    (dict(local_crops=2, local_crop_size=8, local_min_crop_area=0.2, local_max_crop_area=0.1),
     "0 < local_min_crop_area <= local_max_crop_area <= 1, got 0.2 and 0.1"),
    (dict(local_crops=-1), "local_crops must be an int >= 0, got -1"),
])
def test_bad_local_crop_settings_are_refused(fields, message):
  with pytest.raises(ValueError, match=message):
    PreprocessConfig(crop_size=16, **fields)
