"""Tests of dataset loading (datasets/__init__.py, sources.py, folder.py), all offline.

TFDS sets by name run through the real loading code under `tfds.testing.mock_data`
with `MockPolicy.USE_FILES`: `write_tfds_metadata` writes the dataset's real metadata
(features from the TFDS code, split sizes chosen here) to a tmp data_dir, so split names and
sizes are known and the mock yields `num_examples` random examples for any split.
A tiny TFDS builder defined here, prepared in a tmp dir, checks what the mock cannot
(exact slices, sharding, shuffling); image folders are written to tmp_path.
"""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import datasets
from datasets import (DatasetNotPreparedError, PreprocessConfig, get_data, get_dataset_info,
                      get_num_examples, get_preprocess_fn, split_labels)
from datasets import folder
from datasets.sources import write_tfds_metadata
from tests.conftest import REPO_ROOT

MOCK_EXAMPLES = 10


def _batches(ds, n=None):
  ds = ds if n is None else ds.take(n)
  return list(ds.as_numpy_iterator())


# ------------------------------------------------------------ TFDS, mocked
MOCKED = {
    "imagenet2012": dict(sizes={"train": 1000, "validation": 50}, num_classes=1000,
                         image_shape=None),
    "places365_small": dict(sizes={"train": 200, "validation": 30, "test": 40},
                            num_classes=365, image_shape=(256, 256, 3)),
    "cifar10": dict(sizes={"train": 500, "test": 100}, num_classes=10,
                    image_shape=(32, 32, 3)),
}


@pytest.fixture(scope="module")
def mock_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds_metadata")
  for name, spec in MOCKED.items():
    write_tfds_metadata(str(data_dir), name, spec["sizes"])
  return str(data_dir)


def _mock(data_dir):
  return tfds.testing.mock_data(num_examples=MOCK_EXAMPLES, data_dir=data_dir,
                                policy=tfds.testing.MockPolicy.USE_FILES)


@pytest.mark.parametrize("name", list(MOCKED))
def test_tfds_sets_through_get_data(name, mock_dir):
  spec = MOCKED[name]
  config = PreprocessConfig(crop_size=24)
  with _mock(mock_dir):
    info = get_dataset_info(name, data_dir=mock_dir)
    assert info.num_classes == spec["num_classes"] == len(info.class_names)
    assert info.splits == spec["sizes"]
    assert info.image_shape == spec["image_shape"]
    assert info.train_split == "train" and info.eval_split in info.splits

    # Training: repeats past the 10 mocked examples, full batches only.
    ds = get_data(name, "train", is_training=True, batch_size=4, data_dir=mock_dir,
                  preprocess_fn=get_preprocess_fn("inception_preprocess", True, config),
                  shuffle_buffer=20)
    assert ds.element_spec["image"].shape.as_list() == [4, 24, 24, 3]
    batches = _batches(ds, 4)
    assert len(batches) == 4
    for batch in batches:
      assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
      assert batch["image"].min() >= -1 and batch["image"].max() <= 1
      assert batch["image"].min() < 0  # inception_preprocess maps to [-1, 1].
      assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
      assert ((0 <= batch["label"]) & (batch["label"] < spec["num_classes"])).all()

    # Eval: one pass, last batch partial unless drop_remainder.
    eval_split = info.eval_split
    fn = get_preprocess_fn("resize", False, PreprocessConfig(resize_size=16))
    ds = get_data(name, eval_split, is_training=False, batch_size=4, preprocess_fn=fn,
                  data_dir=mock_dir)
    assert [b["image"].shape[0] for b in _batches(ds)] == [4, 4, 2]
    assert all(b["image"].max() <= 1 and b["image"].min() >= 0 for b in _batches(ds))
    ds = get_data(name, eval_split, is_training=False, batch_size=4, preprocess_fn=fn,
                  data_dir=mock_dir, drop_remainder=True)
    assert [b["image"].shape[0] for b in _batches(ds)] == [4, 4]
    ds = get_data(name, eval_split, is_training=False, batch_size=4, preprocess_fn=fn,
                  data_dir=mock_dir, repeat=True)
    assert len(_batches(ds, 5)) == 5


def test_rotation_batches(mock_dir):
  config = PreprocessConfig(resize_size=32, crop_size=16)
  with _mock(mock_dir):
    ds = get_data("cifar10", "train", is_training=True, batch_size=3, data_dir=mock_dir,
                  preprocess_fn=get_preprocess_fn("crop,flip_lr,rotate", True, config))
    batch = _batches(ds, 1)[0]
  assert batch["image"].shape == (3, 4, 16, 16, 3)
  np.testing.assert_array_equal(batch["label"], [[0, 1, 2, 3]] * 3)
  assert batch["label"].dtype == np.int32
  assert batch["class_label"].shape == (3,) and batch["class_label"].dtype == np.int32


def test_num_examples_plain_and_sliced(mock_dir):
  with _mock(mock_dir):
    assert get_num_examples("imagenet2012", "train", data_dir=mock_dir) == 1000
    assert get_num_examples("imagenet2012", "train[:90%]", data_dir=mock_dir) == 900
    assert get_num_examples("imagenet2012", "train[90%:]", data_dir=mock_dir) == 100
    assert get_num_examples("imagenet2012", "train[:123]", data_dir=mock_dir) == 123
    assert get_num_examples("cifar10", "train[-50:]", data_dir=mock_dir) == 50
    assert get_num_examples("places365_small", "validation+test[:10]", data_dir=mock_dir) == 40


def test_bad_split_lists_splits(mock_dir):
  with _mock(mock_dir):
    with pytest.raises(ValueError, match="no split 'val'.*test, train, validation"):
      get_num_examples("places365_small", "val", data_dir=mock_dir)
    with pytest.raises(ValueError, match="no split 'valid'.*train, validation"):
      get_data("imagenet2012", "valid[:10%]", is_training=False, batch_size=2,
               preprocess_fn=None, data_dir=mock_dir)
    with pytest.raises(ValueError, match="train"):
      get_num_examples("cifar10", "train[:2000]", data_dir=mock_dir)


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_unprepared_tfds_set_says_how_to_prepare(name, tmp_path, monkeypatch):
  def no_download(*args, **kwargs):
    raise AssertionError("must not download")
  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
  data_dir = str(tmp_path / "empty")
  os.makedirs(data_dir)
  for call in (lambda: get_data(name, "train", is_training=True, batch_size=2,
                                preprocess_fn=None, data_dir=data_dir),
               lambda: get_dataset_info(name, data_dir=data_dir),
               lambda: get_num_examples(name, "train", data_dir=data_dir)):
    with pytest.raises(DatasetNotPreparedError) as e:
      call()
    message = str(e.value)
    assert repr(name) in message and data_dir in message
    assert f"tfds build {name} --data_dir {data_dir}" in message
    assert ("downloads/manual" in message) == (name == "imagenet2012")
  assert os.listdir(data_dir) == []  # Nothing written, nothing downloaded.


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError) as e:
    get_data("imagenet", "train", is_training=True, batch_size=2, preprocess_fn=None)
  message = str(e.value)
  for name in ("imagenet2012", "places365_small", "cifar10", "cifar100", "shapes",
               "shapes_small", "folder:<root>"):
    assert name in message
  with pytest.raises(ValueError, match="unknown dataset"):
    get_dataset_info("huggingface:foo")


# ------------------------------------------------------- TFDS, really prepared
class DatasetsTestTiny(tfds.core.GeneratorBasedBuilder):
  """26 grayscale 8x8 images; pixel value = 5 * example index, label = index % 3."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, 20), "test": self._generate_examples(20, 26)}

  def _generate_examples(self, start, stop):
    for i in range(start, stop):
      yield i, {"image": np.full((8, 8, 1), 5 * i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tiny"))
  DatasetsTestTiny(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


def _ids(batches):
  """Example indices back from the pixel values of [B, H, W, 3] float images."""
  return [int(round(v * 255 / 5)) for b in batches for v in b["image"][:, 0, 0, 0]]


def test_any_tfds_name_reads_real_data(tiny_dir):
  info = get_dataset_info("datasets_test_tiny", data_dir=tiny_dir)
  assert info.class_names == ["a", "b", "c"] and info.splits == {"train": 20, "test": 6}
  assert info.image_shape == (8, 8, 3)  # Grayscale sources come out RGB.
  ds = get_data("datasets_test_tiny", "train[:25%]", is_training=False, batch_size=2,
                preprocess_fn=None, data_dir=tiny_dir)
  batches = _batches(ds)
  assert batches[0]["image"].shape == (2, 8, 8, 3)
  ids = _ids(batches)
  assert len(ids) == 5 == get_num_examples("datasets_test_tiny", "train[:25%]", tiny_dir)
  assert sorted(ids) == sorted(set(ids)) and all(0 <= i < 20 for i in ids)
  assert [int(l) for b in batches for l in b["label"]] == [i % 3 for i in ids]


def test_training_shuffle_follows_seed(tiny_dir):
  def order(seed):
    ds = get_data("datasets_test_tiny", "train", is_training=True, batch_size=20,
                  preprocess_fn=None, data_dir=tiny_dir, seed=seed, shuffle_buffer=20)
    return _ids(_batches(ds, 2))
  first = order(1)
  assert sorted(first[:20]) == list(range(20)) and sorted(first[20:]) == list(range(20))
  assert first == order(1)
  assert first[:20] != list(range(20)) and first != order(2)


def _context(index, num=2):
  return tf.distribute.InputContext(num_input_pipelines=num, input_pipeline_id=index,
                                    num_replicas_in_sync=num)


def test_tfds_sharding_gives_disjoint_halves(tiny_dir):
  parts = []
  for index in range(2):
    ds = get_data("datasets_test_tiny", "train", is_training=False, batch_size=3,
                  preprocess_fn=None, data_dir=tiny_dir, input_context=_context(index))
    parts.append(_ids(_batches(ds)))
  assert len(parts[0]) == len(parts[1]) == 10
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == list(range(20))
  ds = get_data("datasets_test_tiny", "train", is_training=True, batch_size=3,
                preprocess_fn=None, data_dir=tiny_dir, input_context=_context(1))
  assert set(_ids(_batches(ds, 10))) == set(parts[1])
  # Slices are sharded too.
  whole = _ids(_batches(get_data("datasets_test_tiny", "train[:50%]", is_training=False,
                                 batch_size=20, preprocess_fn=None, data_dir=tiny_dir)))
  halves = [_ids(_batches(get_data("datasets_test_tiny", "train[:50%]", is_training=False,
                                   batch_size=20, preprocess_fn=None, data_dir=tiny_dir,
                                   input_context=_context(i)))) for i in range(2)]
  assert len(halves[0]) == len(halves[1]) == 5 and sorted(halves[0] + halves[1]) == sorted(whole)


class _FakeShapes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Stands in for datasets.shapes.Shapes (same contract), to test the integration alone."""
  name = "shapes"
  VERSION = tfds.core.Version("0.0.1")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="default"),
                     tfds.core.BuilderConfig(name="small")]
  generated = []

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(64, 64, 3)),
            "label": tfds.features.ClassLabel(names=["house", "tree"])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    type(self).generated.append(self.builder_config.name)
    n = 6 if self.builder_config.name == "small" else 12
    return {"train": self._generate_examples(n), "test": self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"image": np.full((64, 64, 3), i, np.uint8), "label": i % 2}


def test_shapes_contract_with_a_stand_in(tmp_path, monkeypatch):
  module = type(os)("datasets.shapes")
  module.Shapes = _FakeShapes
  monkeypatch.setitem(sys.modules, "datasets.shapes", module)
  monkeypatch.setattr(datasets, "shapes", module, raising=False)
  data_dir = str(tmp_path)
  info = get_dataset_info("shapes_small", data_dir=data_dir)
  assert info.splits == {"train": 6, "test": 3} and info.class_names == ["house", "tree"]
  assert info.image_shape == (64, 64, 3) and info.name == "shapes_small"
  assert os.path.isdir(os.path.join(data_dir, "shapes", "small", "0.0.1"))
  ds = get_data("shapes_small", "train", is_training=True, batch_size=4, preprocess_fn=None,
                data_dir=data_dir)
  assert _batches(ds, 3)[2]["image"].shape == (4, 64, 64, 3)
  assert get_num_examples("shapes", "train[:50%]", data_dir=data_dir) == 6
  assert _FakeShapes.generated == ["small", "default"]  # Each prepared once.


def test_embedded_shapes_prepared_once_by_processes_that_start_together(tmp_path):
  """Grid cells side by side and SLURM jobs start together on a fresh data dir: one process
  generates the data, the others wait for it and read it (no clash over TFDS's folders)."""
  script = ("import sys, datasets; info = datasets.get_dataset_info('shapes_small', sys.argv[1]); "
            "print(info.splits['train'], info.splits['test'])")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(3)]
  for proc in procs:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1].split() == ["1000", "300"]
  assert os.listdir(tmp_path / "shapes" / "small") == ["1.1.0"]  # No leftover incomplete.*.


def test_embedded_shapes_prepared_on_first_use(tmp_path):
  shapes = pytest.importorskip("datasets.shapes")
  if not hasattr(shapes, "Shapes"):
    pytest.skip("datasets/shapes.py has no Shapes builder yet")
  data_dir = str(tmp_path)
  info = get_dataset_info("shapes_small", data_dir=data_dir)
  assert set(info.splits) == {"train", "test"} and info.image_shape == (64, 64, 3)
  assert info.num_classes == len(info.class_names)
  assert get_num_examples("shapes_small", "test", data_dir=data_dir) == info.splits["test"]
  ds = get_data("shapes_small", "test", is_training=False, batch_size=8, preprocess_fn=None,
                data_dir=data_dir)
  batch = _batches(ds, 1)[0]
  assert batch["image"].shape == (8, 64, 64, 3) and batch["label"].dtype == np.int32
  assert ((0 <= batch["label"]) & (batch["label"] < info.num_classes)).all()


# ------------------------------------------------------------- image folders
def _png(path, value, size=(10, 12), mode="RGB"):
  shape = size + ((3,) if mode == "RGB" else ())
  Image.fromarray(np.full(shape, value, np.uint8), mode=None).save(path)


@pytest.fixture
def image_folder(tmp_path):
  """train: cat 4, dog 3 (one a .JPEG, one grayscale); test: cat 2, emu 1; plus junk."""
  root = tmp_path / "images"
  value = iter(range(10, 250, 10))
  layout = {"train": {"cat": 4, "dog": 3}, "test": {"cat": 2, "emu": 1}}
  for split, classes in layout.items():
    for name, n in classes.items():
      os.makedirs(root / split / name)
      for i in range(n):
        _png(root / split / name / f"{i}.png", next(value))
  os.rename(root / "train" / "dog" / "0.png", root / "train" / "dog" / "0.old")
  Image.fromarray(np.full((9, 9, 3), 200, np.uint8)).save(root / "train" / "dog" / "x.JPEG")
  _png(root / "train" / "dog" / "gray.png", 120, mode="L")
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  os.makedirs(root / "train" / "cat" / "nested")
  return str(root)


def test_folder_info_and_counts(image_folder):
  name = f"folder:{image_folder}"
  info = get_dataset_info(name)
  assert info.class_names == ["cat", "dog", "emu"] and info.num_classes == 3
  assert info.splits == {"train": 8, "test": 3}
  assert info.image_shape is None and info.eval_split == "test"
  assert get_num_examples(name, "train") == 8
  assert get_num_examples(name, "train[:50%]") == 4
  assert get_num_examples(name, "train[-3:]+test") == 6


def test_folder_end_to_end(image_folder):
  name = f"folder:{image_folder}"
  fn = get_preprocess_fn("resize", False, PreprocessConfig(resize_size=8))
  ds = get_data(name, "train", is_training=False, batch_size=3, preprocess_fn=fn)
  batches = _batches(ds)
  assert [b["image"].shape for b in batches] == [(3, 8, 8, 3), (3, 8, 8, 3), (2, 8, 8, 3)]
  labels = [int(l) for b in batches for l in b["label"]]
  assert sorted(labels) == [0, 0, 0, 0, 1, 1, 1, 1]
  # Each file's label is its class folder's index.
  expected = {path: label for path, label in folder.FolderSource(image_folder).files("train")}
  assert sorted(expected.values()) == sorted(labels)
  test_labels = [int(l) for b in _batches(get_data(name, "test", is_training=False,
                                                   batch_size=8, preprocess_fn=fn))
                 for l in b["label"]]
  assert sorted(test_labels) == [0, 0, 2]  # emu is class 2 in every split.
  # In stored order (an evaluation's), read without decoding: what get_data's indices select.
  assert split_labels(name, "train").tolist() == labels
  assert split_labels(name, "train[-3:]+test").tolist() == labels[-3:] + test_labels
  # Slices split the files, every class in each part.
  first = _batches(get_data(name, "train[:50%]", is_training=False, batch_size=8,
                            preprocess_fn=fn))
  assert len(first) == 1 and first[0]["image"].shape[0] == 4
  # Training repeats and shuffles.
  ds = get_data(name, "train", is_training=True, batch_size=5, preprocess_fn=fn)
  assert len(_batches(ds, 4)) == 4


def test_folder_pixels_and_grayscale(image_folder):
  name = f"folder:{image_folder}"
  ds = get_data(name, "train", is_training=False, batch_size=8,
                preprocess_fn=get_preprocess_fn("resize", False, PreprocessConfig(resize_size=4)))
  images = _batches(ds)[0]["image"]
  values = sorted(int(round(v * 255)) for v in images[:, 0, 0, 0])
  assert 120 in values and 200 in values  # The grayscale PNG and the .JPEG.
  assert np.allclose(images[..., 0], images[..., 2], atol=0.02)  # Gray stays gray in RGB.


def test_folder_unreadable_files_are_skipped_by_name(image_folder, capfd):
  train = os.path.join(image_folder, "train", "cat")
  with open(os.path.join(train, "0.png"), "rb") as f:
    data = f.read()
  with open(os.path.join(train, "truncated.png"), "wb") as f:
    f.write(data[:len(data) // 2])
  with open(os.path.join(train, "garbage.png"), "wb") as f:
    f.write(b"\x89PNG not really")
  name = f"folder:{image_folder}"
  assert get_num_examples(name, "train") == 10  # Counted as files.
  fn = get_preprocess_fn("resize", False, PreprocessConfig(resize_size=8))
  ds = get_data(name, "train", is_training=False, batch_size=4, preprocess_fn=fn)
  assert sum(b["image"].shape[0] for b in _batches(ds)) == 8
  err = capfd.readouterr().err
  assert "skipping unreadable image file" in err
  assert "truncated.png" in err and "garbage.png" in err
  assert sorted(os.path.basename(p) for p in folder.find_unreadable(image_folder)) == [
      "garbage.png", "truncated.png"]


def test_folder_errors(image_folder, tmp_path):
  name = f"folder:{image_folder}"
  missing_split = os.path.join(image_folder, "validation")
  with pytest.raises(ValueError, match=f"no split 'validation'.*{missing_split}.*test, train"):
    get_data(name, "validation", is_training=False, batch_size=2, preprocess_fn=None)
  with pytest.raises(ValueError, match="no split 'val'"):
    get_num_examples(name, "train+val[:5]")
  missing = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match=f"{missing} does not exist"):
    get_dataset_info(f"folder:{missing}")
  os.makedirs(tmp_path / "flat")
  _png(tmp_path / "flat" / "a.png", 1)
  with pytest.raises(ValueError, match="no split folders"):
    get_num_examples(f"folder:{tmp_path / 'flat'}", "train")


def test_folder_sharding_gives_disjoint_halves(image_folder):
  name = f"folder:{image_folder}"
  fn = get_preprocess_fn("resize", False, PreprocessConfig(resize_size=4))

  def values(batches):
    return [int(round(v * 255)) for b in batches for v in b["image"][:, 0, 0, 0]]

  whole = values(_batches(get_data(name, "train", is_training=False, batch_size=8,
                                   preprocess_fn=fn)))
  parts = [values(_batches(get_data(name, "train", is_training=False, batch_size=8,
                                    preprocess_fn=fn, input_context=_context(i))))
           for i in range(2)]
  assert len(parts[0]) == len(parts[1]) == 4
  assert not set(parts[0]) & set(parts[1])
  assert sorted(parts[0] + parts[1]) == sorted(whole)
  # One pipeline of one: no sharding.
  single = values(_batches(get_data(name, "train", is_training=False, batch_size=8,
                                    preprocess_fn=fn, input_context=_context(0, num=1))))
  assert sorted(single) == sorted(whole)


def test_batch_needs_fixed_size(image_folder):
  with pytest.raises(ValueError, match="fixed size"):
    get_data(f"folder:{image_folder}", "train", is_training=False, batch_size=2,
             preprocess_fn=None)


def test_public_api():
  for name in ("get_data", "get_dataset_info", "get_num_examples", "get_preprocess_fn",
               "validate_spec", "PreprocessConfig", "DATASETS", "PREPROCESS_OPS"):
    assert hasattr(datasets, name)
  for name in ("imagenet2012", "places365_small", "cifar10", "cifar100", "shapes",
               "shapes_small"):
    assert name in datasets.DATASETS
