"""The ImageNet-shaped dataset made here (datasets/imagenet_like.py): imagenet2012 in TFDS's own
format, prepared by TFDS's own builder, with JPEGs of ImageNet's sizes cut from real
photographs, on which the suite's ImageNet pipelines run as on the real set."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import datasets
from datasets import imagenet_like


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("imagenet_like"))
  info = imagenet_like.prepare(data_dir, classes=4, train_per_class=6, val_per_class=3)
  return data_dir, info


def _raw(data_dir, split):
  """(JPEG bytes, label, file name) of every example of a split, as stored."""
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  return [(ex["image"].numpy(), int(ex["label"]), ex["file_name"].numpy().decode()) for ex in ds]


def test_it_is_imagenet2012_in_tfds_format(imagenet_dir):
  data_dir, info = imagenet_dir
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  features = builder.info.features
  assert isinstance(features["image"], tfds.features.Image)
  assert features["image"].encoding_format == "jpeg"
  assert features["label"].num_classes == imagenet_like.NUM_CLASSES == 1000
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {
      "train": 24, "validation": 12}
  wnids = imagenet_like.wnids()
  chosen = [wnids.index(w) for w in imagenet_like.class_wnids(4)]
  assert chosen == [0, 250, 500, 750] and list(info["counts"]["train"]) == [wnids[i]
                                                                          for i in chosen]
  train = _raw(data_dir, "train")
  assert sorted({label for _, label, _ in train}) == chosen
  assert all(name.startswith(wnids[label] + "_") for _, label, name in train)
  # A validation image's label is the one ILSVRC2012's list gives its file number.
  val_wnids = imagenet_like.validation_wnids()
  for _, label, name in _raw(data_dir, "validation"):
    number = int(name[len("ILSVRC2012_val_"):-len(".JPEG")])
    assert val_wnids[number - 1] == wnids[label]
  info_file = os.path.join(data_dir, "imagenet2012", imagenet_like.INFO_FILE)
  mtime = os.stat(info_file).st_mtime_ns
  assert imagenet_like.prepare(data_dir, classes=4, train_per_class=6, val_per_class=3) == info
  assert os.stat(info_file).st_mtime_ns == mtime  # The same settings: kept as it is.


def test_its_jpegs_have_imagenets_sizes(imagenet_dir):
  data_dir, _ = imagenet_dir
  examples = _raw(data_dir, "train") + _raw(data_dir, "validation")
  sizes = [len(jpeg) for jpeg, _, _ in examples]
  assert all(jpeg[:2] == b"\xff\xd8" for jpeg, _, _ in examples)  # JPEG files, stored as they are.
  assert 60e3 < np.mean(sizes) < 140e3, np.mean(sizes)
  for jpeg, _, _ in examples:
    h, w, c = tf.io.decode_jpeg(jpeg).shape
    assert c == 3 and 300 <= max(h, w) <= 500 and 0.74 <= w / h <= 1.36, (h, w)


def test_the_imagenet_pipelines_run_on_it(imagenet_dir):
  """The training and evaluation preprocessing of the ImageNet flagfiles, at 224."""
  data_dir, _ = imagenet_dir
  config = datasets.PreprocessConfig(crop_size=(224, 224), smaller_size=256)
  for split, spec, training in (("train", "inception_preprocess", True),
                                ("validation", "resize_small,central_crop,-1_to_1", False)):
    ds = datasets.get_data("imagenet2012", split, is_training=training, batch_size=4,
                           preprocess_fn=datasets.get_preprocess_fn(spec, training, config),
                           data_dir=data_dir)
    batch = next(iter(ds))
    assert batch["image"].shape == (4, 224, 224, 3) and batch["image"].dtype == tf.float32
    assert set(batch["label"].numpy()) <= {0, 250, 500, 750}
  assert datasets.get_dataset_info("imagenet2012", data_dir).num_classes == 1000


def test_another_imagenet_and_bad_settings_are_refused(tmp_path):
  real = tmp_path / "imagenet2012" / "5.1.0"
  os.makedirs(real)
  (real / "dataset_info.json").write_text("{}")
  with pytest.raises(FileExistsError, match="holds an imagenet2012 this script did not make"):
    imagenet_like.prepare(str(tmp_path), classes=2, train_per_class=1, val_per_class=1)
  assert os.listdir(tmp_path / "imagenet2012") == ["5.1.0"]
  assert (real / "dataset_info.json").read_text() == "{}"
  with pytest.raises(ValueError, match=r"classes must be an integer from 1 to 16, got 17 \(one "
                                       r"photograph per class\)"):
    imagenet_like.prepare(str(tmp_path / "other"), classes=17)
  with pytest.raises(ValueError, match=r"val_per_class must be an integer from 1 to 50, got 51"):
    imagenet_like.prepare(str(tmp_path / "other"), val_per_class=51)


def _bytes_read() -> int:
  """Bytes this process has read through system calls so far (/proc/self/io rchar): every
  read, TensorFlow's included, whether or not from the page cache."""
  with open("/proc/self/io") as f:
    return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_labels_and_a_labelled_subset_are_read_without_the_other_images(tmp_path_factory):
  """split_labels reads each record's label, not its image: under 1% of the split's bytes, the
  same labels as the decoded pipeline's, also for a split over two files. A pass over a 1%
  subset (get_data's indices, as fine-tuning on 1% of the labels reads it) reads under 2% of
  the split's bytes and yields exactly those examples of the full pass."""
  data_dir = str(tmp_path_factory.mktemp("imagenet_like_200"))
  imagenet_like.prepare(data_dir, classes=4, train_per_class=50, val_per_class=3)
  files = tf.io.gfile.glob(os.path.join(data_dir, "imagenet2012", "*", "*-train.tfrecord*"))
  split_bytes = sum(os.path.getsize(f) for f in files)
  preprocess = datasets.get_preprocess_fn("resize", False, datasets.PreprocessConfig(
      resize_size=(16, 16)))

  def passes(split, indices=None):
    ds = datasets.get_data("imagenet2012", split, is_training=False, preprocess_fn=preprocess,
                           batch_size=8, data_dir=data_dir, indices=indices)
    batches = [(b["image"].numpy(), b["label"].numpy()) for b in ds]
    return np.concatenate([i for i, _ in batches]), np.concatenate([l for _, l in batches])

  datasets.split_labels("imagenet2012", "validation", data_dir)  # Imports, metadata.
  before = _bytes_read()
  labels = datasets.split_labels("imagenet2012", "train", data_dir)
  read = _bytes_read() - before
  images, decoded = passes("train")
  assert len(labels) == 200 and np.array_equal(labels, decoded)
  print(f"labels: {read} of {split_bytes} bytes")
  assert read < 0.01 * split_bytes, (read, split_bytes)
  np.testing.assert_array_equal(datasets.split_labels("imagenet2012", "train[-5:]+validation",
                                                      data_dir),
                                passes("train[-5:]+validation")[1])

  subset = np.array([151, 7])  # 1% of 200, in any order.
  passes("train", subset)  # Its pipeline traced once.
  before = _bytes_read()
  sub_images, sub_labels = passes("train", subset)
  read = _bytes_read() - before
  print(f"subset pass: {read} of {split_bytes} bytes")
  assert read < 0.02 * split_bytes, (read, split_bytes)
  np.testing.assert_array_equal(sub_images, images[[7, 151]])
  np.testing.assert_array_equal(sub_labels, decoded[[7, 151]])
  with pytest.raises(ValueError, match=r"indices must be positions 0 \.\. 199 .*got 7 \.\. 200"):
    passes("train", [7, 200])


def _jpeg_and_whole_decode(data_dir, split, spec, config):
  """The images of `spec` by the JPEG path (decoding the crop's region) and by decoding whole
  images, over one pass of `split` in evaluation."""
  fn = datasets.get_preprocess_fn(spec, False, config)
  assert fn.from_jpeg is not None
  return [np.concatenate([b["image"].numpy() for b in datasets.get_data(
      "imagenet2012", split, is_training=False, preprocess_fn=f, batch_size=6,
      data_dir=data_dir)]) for f in (fn, lambda example: fn(example))]


@pytest.mark.parametrize("spec, sizes", [
    ("inception_crop", dict(crop_size=224)),
    ("inception_preprocess", dict(crop_size=(200, 180))),
    ("central_crop,-1_to_1", dict(crop_size=224)),
    ("crop", dict(crop_size=(210, 200)))])
def test_crops_decoded_from_their_region_equal_the_whole_images(imagenet_dir, spec, sizes):
  """The crops read from the JPEG's region equal those of the whole decoded image but at their
  first and last column, where the region's subsampled colour has fewer neighbours."""
  data_dir, _ = imagenet_dir
  config = datasets.PreprocessConfig(**sizes)
  region, whole = _jpeg_and_whole_decode(data_dir, "train", spec, config)
  assert region.shape == whole.shape and len(region) == 24
  diff = np.abs(region - whole).max(axis=-1)
  np.testing.assert_array_less(diff[:, :, 1:-1], 1e-4)
  assert diff[:, :, [0, -1]].mean() < 0.02


def test_the_evaluation_crop_is_resized_from_its_region_within_a_source_pixel(imagenet_dir):
  """resize_small,central_crop on JPEGs: the region under the crop, its corners rounded to
  source pixels, decoded alone and resized; within a source pixel of the footprint of the crop
  of the whole image resized."""
  data_dir, _ = imagenet_dir
  config = datasets.PreprocessConfig(smaller_size=256, crop_size=224)
  region, whole = _jpeg_and_whole_decode(data_dir, "validation", "resize_small,central_crop",
                                         config)
  expected = []
  for jpeg, _, _ in _raw(data_dir, "validation"):
    image = tf.image.convert_image_dtype(tf.io.decode_jpeg(jpeg, channels=3), tf.float32)
    shape = np.array(image.shape[:2])
    resized = np.maximum(np.round(shape * 256 / shape.min()), 256).astype(int)
    ratio = shape / resized
    footprint = (resized - 224) // 2 * ratio, 224 * ratio  # Its corner and size, in source pixels.
    start, size = np.round(footprint[0]).astype(int), np.round(footprint[1]).astype(int)
    assert np.all(np.abs(start - footprint[0]) <= 0.5) and np.all(
        np.abs(start + size - footprint[0] - footprint[1]) <= 1.0)
    crop = image[start[0]:start[0] + size[0], start[1]:start[1] + size[1]]
    expected.append(tf.image.resize(crop, (224, 224)).numpy())
  diff = np.abs(region - np.stack(expected)).max(axis=-1)
  np.testing.assert_array_less(diff[:, :, 1:-1], 1e-4)
  # Against the whole image resized: the same picture, resampled a fraction of a pixel apart.
  assert np.abs(region - whole).mean() < 0.03
