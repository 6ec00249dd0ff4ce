"""Export loading, feature extraction and caching, and run_linear_eval on a toy export and toy data.

The data layer is replaced by a small in-memory fake of the `datasets` API (monkeypatched), and the
backbone is a tiny SavedModel with a `representation` signature written to tmp_path.
"""

import dataclasses
import json
import os
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

from core import files
from core.errors import ConfigError
import datasets
from eval import features
from eval import heads
from eval import linear_eval
from eval import representation

SIZE = 8
NUM_CLASSES = 3
LAYERS = ["block1", "block2", "pre_logits"]


class ToyBackbone(tf.Module):
  """block1 [B,8,8,16], block2 [B,4,4,32], pre_logits [B,32]."""

  def __init__(self, seed=0):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.w1 = tf.Variable(rng.normal(size=(3, 16)).astype(np.float32))
    self.w2 = tf.Variable(rng.normal(size=(16, 32)).astype(np.float32) / 4)

  def end_points(self, images):
    a = tf.nn.relu(tf.einsum("bhwc,cd->bhwd", images, self.w1))
    b = tf.nn.relu(tf.einsum("bhwc,cd->bhwd", tf.nn.avg_pool2d(a, 2, 2, "VALID"), self.w2))
    return {"block1": a, "block2": b, "pre_logits": tf.reduce_mean(b, axis=[1, 2])}


def save_export(path, with_representation=True, spatial=SIZE, seed=0):
  module = ToyBackbone(seed)
  spec = tf.TensorSpec([None, spatial, spatial, 3], tf.float32, name="images")
  module.representation = tf.function(module.end_points, input_signature=[spec])
  module.serve = tf.function(
      lambda images: {"logits": module.end_points(images)["pre_logits"][:, :NUM_CLASSES]},
      input_signature=[spec])
  signatures = {"serving_default": module.serve}
  if with_representation:
    signatures["representation"] = module.representation
  tf.saved_model.save(module, str(path), signatures=signatures)
  info = dict(task="toy", architecture="toy", filters_factor=1, mode="v2",
              input_shape=[SIZE, SIZE, 3], end_points=LAYERS, eval_preprocessing="toy_eval",
              preprocess_config={})
  with open(os.path.join(path, "export_info.json"), "w") as f:
    json.dump(info, f)
  return str(path)


def toy_split(num, seed, size=SIZE):
  """Images: a per-class pattern plus noise; the class is recoverable from every layer."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(num) % NUM_CLASSES).astype(np.int32)
  rng.shuffle(labels)
  patterns = np.random.default_rng(99).normal(size=(NUM_CLASSES, size, size, 3))
  images = patterns[labels] + 2.0 * rng.normal(size=(num, size, size, 3))
  return images.astype(np.float32), labels


class FakeData:
  """The `datasets` calls of run_linear_eval, on in-memory arrays.

  Training batches follow heads.epoch_orders, the order the cached path uses, so the two
  protocols see the same batches when no augmentation is applied.
  """

  def __init__(self, size=SIZE, num_train=240, num_test=120):
    self.splits = {"train": toy_split(num_train, 1, size), "test": toy_split(num_test, 2, size)}
    self.calls = []

  def install(self, monkeypatch):
    monkeypatch.setattr(datasets, "get_data", self.get_data, raising=False)
    monkeypatch.setattr(datasets, "get_preprocess_fn", self.get_preprocess_fn, raising=False)
    monkeypatch.setattr(datasets, "get_num_examples",
                        lambda dataset, split, data_dir=None: len(self.splits[split][1]),
                        raising=False)
    monkeypatch.setattr(datasets, "get_dataset_info", lambda dataset, data_dir=None:
                        types.SimpleNamespace(num_classes=NUM_CLASSES), raising=False)
    monkeypatch.setattr(datasets, "validate_spec", lambda spec, config: [], raising=False)
    monkeypatch.setattr(datasets, "split_classes", lambda dataset, split, data_dir=None: None,
                        raising=False)
    return self

  def get_preprocess_fn(self, spec, is_training, config):
    self.calls.append(("preprocess", spec, is_training))
    return lambda example: example

  def get_data(self, dataset, split, *, is_training, preprocess_fn, batch_size, data_dir=None,
               shuffle_buffer=None, seed=0, indices=None, input_context=None):
    # The per-layer evaluation reads whole splits, in one input pipeline.
    assert indices is None and input_context is None
    images, labels = self.splits[split]

    def batches():  # A split counts as read once its first batch is asked for.
      self.calls.append(("data", split, is_training))
      if is_training:  # Endless, shuffled, full batches.
        for order in heads.epoch_orders(len(labels), batch_size, seed):
          for idx in order:
            yield {"image": images[idx], "label": labels[idx]}
      else:
        for s in range(0, len(labels), batch_size):
          yield {"image": images[s:s + batch_size], "label": labels[s:s + batch_size]}

    return _Batches(batches, images.shape[1:])


class _Batches:
  """Batches with the element spec of a tf.data pipeline (read only when iterated)."""

  def __init__(self, make, image_shape):
    self.make = make
    self.element_spec = {"image": tf.TensorSpec([None, *image_shape], tf.float32)}

  def __iter__(self):
    return iter(self.make())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return save_export(tmp_path_factory.mktemp("export") / "export")


def make_config(tmp_path, export, **overrides):
  kwargs = dict(workdir=str(tmp_path / "eval"), dataset="toy", hub_module=export,
                max_features=200, batch_size=32, eval_batch_size=64, probe_lrs=(0.1,),
                lr_scale_batch_size=32, epochs=4, decay_epochs=(3,), probe_weight_decays=(1e-4,))
  kwargs.update(overrides)
  return linear_eval.LinearEvalConfig(**kwargs)


def test_bad_export_paths(tmp_path):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match=f"no backbone export at '{missing}'"):
    representation.load_export(missing)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="not a SavedModel export"):
    representation.load_export(str(tmp_path / "empty"))
  path = save_export(tmp_path / "no_rep", with_representation=False)
  with pytest.raises(ValueError, match=r"no 'representation' signature; its signatures are: "
                     r"\['serving_default'\]"):
    representation.load_export(path)


def test_export_features_match_module(tmp_path, export_dir):
  rep = representation.load_export(export_dir)
  assert rep.layers == LAYERS and rep.info["source"] == os.path.abspath(export_dir)
  assert rep.info["eval_preprocessing"] == "toy_eval"
  # An export traced with unknown spatial sizes pools the same (shapes probed on first call).
  dynamic = representation.load_export(save_export(tmp_path / "dyn", spatial=None))
  images, _ = toy_split(5, 0)
  want = ToyBackbone().end_points(tf.constant(images))
  for rep_ in (rep, dynamic):
    extractor = features.FeatureExtractor(rep_, "adaptive_avg", max_features=200)
    got = extractor(images)
    assert extractor.feature_dims == {"block1": 144, "block2": 128, "pre_logits": 32}
    np.testing.assert_allclose(got["pre_logits"], want["pre_logits"], rtol=1e-5)
    np.testing.assert_allclose(got["block2"], tf.reshape(
        tf.nn.avg_pool2d(want["block2"], 2, 2, "VALID"), [5, -1]), rtol=1e-5, atol=1e-6)
  # Patches [B, P, H, W, C]: each patch gets max_features // P with concat.
  patches = np.stack([images, images[::-1]], axis=1)
  extractor = features.FeatureExtractor(rep, "adaptive_avg", "concat", max_features=200)
  got = extractor(patches)
  assert extractor.feature_dims == {"block1": 2 * 2 * 2 * 16, "block2": 2 * 32,
                                    "pre_logits": 2 * 32}
  np.testing.assert_allclose(got["pre_logits"], np.concatenate(
      [want["pre_logits"], want["pre_logits"][::-1]], axis=1), rtol=1e-5)
  with pytest.raises(ValueError, match=r"unknown layers \['block9'\]"):
    rep.select(["block9"])


def toy_batches(images, labels, size=16):
  """The examples as batches of `size` (the last one shorter)."""
  return ({"image": images[s:s + size], "label": labels[s:s + size]}
          for s in range(0, len(labels), size))


def test_feature_store(tmp_path, export_dir):
  extractor = features.FeatureExtractor(representation.load_export(export_dir), max_features=200)
  images, labels = toy_split(50, 0)
  batches = lambda start: toy_batches(images[start:], labels[start:])
  parts = dict(representation="toy", split="train")
  cache = str(tmp_path / "cache")
  first = features.extract(extractor, batches, cache, parts, dtype="float16", num_examples=50)
  assert first.num_examples == 50 and first.read_all("block1").dtype == np.float16
  # Batches of 16, 16, 16 and 2 examples: one trace of the extraction for all of them.
  assert extractor._fn.experimental_get_tracing_count() == 1  # pylint: disable=protected-access
  (key,) = os.listdir(cache)
  assert sorted(os.listdir(os.path.join(cache, key))) == [
      "block1.bin", "block2.bin", "labels.bin", "meta.json", "pre_logits.bin"]
  table = np.memmap(os.path.join(cache, key, "block2.bin"), np.float16, "r",
                    shape=(50, first.dims["block2"]))  # Plain rows, as the docstring says.
  np.testing.assert_array_equal(table, first.read_all("block2"))

  def fail(start):
    raise AssertionError("the store should have been used")
  second = features.extract(extractor, fail, cache, parts, dtype="float16", num_examples=50)
  np.testing.assert_array_equal(second.labels, labels)
  for name in LAYERS:
    np.testing.assert_array_equal(second.read_all(name), first.read_all(name))
    np.testing.assert_array_equal(second.read(name, np.array([3, 7, 8])),
                                  first.read_all(name)[[3, 7, 8]])
  other = features.extract(extractor, batches, cache, dict(parts, split="test"), num_examples=50)
  assert other.read_all("block1").dtype == np.float32 and len(os.listdir(cache)) == 2


def test_an_interrupted_extraction_goes_on_from_its_last_committed_row(tmp_path, export_dir,
                                                                       monkeypatch):
  """Killed after 3 of 4 batches (its rows committed after each batch), the same call extracts
  from row 48 on and the store equals an uninterrupted one; an unfinished store is never read."""
  from eval import store as store_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(store_lib, "COMMIT_SECONDS", 0.0)
  extractor = features.FeatureExtractor(representation.load_export(export_dir), max_features=200)
  images, labels = toy_split(50, 0)
  starts = []

  def batches(start, stop_after=None):
    starts.append(start)
    for i, batch in enumerate(toy_batches(images[start:], labels[start:])):
      if i == stop_after:
        raise KeyboardInterrupt
      yield batch
  cache = str(tmp_path / "cache")
  with pytest.raises(KeyboardInterrupt):
    features.extract(extractor, lambda s: batches(s, 3), cache, {}, num_examples=50)
  (key,) = os.listdir(cache)
  assert store_lib.open_store(os.path.join(cache, key), LAYERS) is None  # Not complete.
  resumed = features.extract(extractor, batches, cache, {}, num_examples=50)
  assert starts == [0, 48]
  whole = features.extract(extractor, batches, None, {}, num_examples=50)
  np.testing.assert_array_equal(resumed.labels, labels)
  for name in LAYERS:
    np.testing.assert_allclose(resumed.read_all(name), whole.read_all(name), rtol=1e-6)


@pytest.mark.parametrize("on_disk", [False, True])
def test_extracted_features_whatever_the_expected_count(export_dir, tmp_path, on_disk):
  """A store made for `num_examples` rows holds the same features as the batches, when the split
  has that many examples, more (the rest joined on) or fewer (cut)."""
  extractor = features.FeatureExtractor(representation.load_export(export_dir), max_features=200)
  images, labels = toy_split(50, 0)
  batches = lambda start: toy_batches(images[start:], labels[start:])
  want = {name: [] for name in LAYERS}
  for batch in batches(0):
    for name, value in extractor(batch["image"]).items():
      want[name].append(value.numpy())
  for expected in (50, 20, 40, 90):
    cache = str(tmp_path / f"{expected}") if on_disk else None
    got = features.extract(extractor, batches, cache, {}, dtype="float16", num_examples=expected)
    np.testing.assert_array_equal(got.labels, labels)
    for name in LAYERS:
      np.testing.assert_array_equal(got.read_all(name),
                                    np.concatenate(want[name]).astype(np.float16))


def test_cached_and_on_the_fly_agree(tmp_path, monkeypatch, export_dir):
  FakeData().install(monkeypatch)
  cached = linear_eval.run_linear_eval(make_config(tmp_path / "a", export_dir))
  fly = linear_eval.run_linear_eval(make_config(tmp_path / "b", export_dir, on_the_fly=True))
  for name in LAYERS:
    a, b = cached["layers"][name], fly["layers"][name]
    assert a["dim"] == b["dim"]
    assert a["top1"] == b["top1"] and a["top5"] == b["top5"]
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)
  assert 0.6 < cached["layers"]["block1"]["top1"] < 0.95  # Not a trivial agreement.
  assert fly["dataset"]["num_val_examples"] == cached["dataset"]["num_val_examples"] == 120


def test_run_linear_eval(tmp_path, monkeypatch, export_dir):
  data = FakeData().install(monkeypatch)
  config = make_config(tmp_path, export_dir, knn_k=5, examples_per_class=20, eval_model="mlp",
                       channels_hidden=16, feature_cache_dir=str(tmp_path / "cache"))
  r = linear_eval.run_linear_eval(config)
  with open(os.path.join(config.workdir, "results.json")) as f:
    assert json.load(f) == r
  assert os.listdir(config.workdir) == ["results.json"]
  assert ("preprocess", "toy_eval", False) in data.calls  # The export's eval preprocessing.
  assert r["source"] == dict(hub_module=os.path.abspath(export_dir), task="toy",
                             architecture="toy", filters_factor=1, mode="v2",
                             last_relu=None, vit_patch_size=None, vit_position_embedding=None,
                             eval_preprocessing="toy_eval",
                             fingerprint=files.export_fingerprint(export_dir))
  assert r["layer_order"] == LAYERS
  assert r["low_label"] == dict(train_fraction=None, examples_per_class=20, seed=0,
                                num_train_examples=60)
  assert r["dataset"]["num_train_examples"] == 60 and r["dataset"]["num_classes"] == 3
  assert r["config"]["examples_per_class"] == 20 and r["config"]["decay_epochs"] == [3]
  for name in LAYERS:
    entry = r["layers"][name]
    assert set(entry) == {"dim", "top1", "top5", "loss", "knn_top1", "setting"}
    assert entry["setting"] == dict(lr=0.1, weight_decay=1e-4)
    assert 0 <= entry["top1"] <= entry["top5"] == 1.0  # 3 classes: top-3 always hits.
  assert r["layers"]["block2"]["knn_top1"] > 0.5  # Chance: 1/3.
  assert r["best_layer"]["top1"] == max(e["top1"] for e in r["layers"].values())
  assert set(r["times"]) == {"feature_extraction_s", "head_training_s", "input_stats_s", "knn_s",
                             "total_s"}
  assert 0 < r["times"]["input_stats_s"] < r["times"]["head_training_s"] < r["times"]["total_s"]
  assert r["run"]["random_seed"] == 0 and r["run"]["versions"]["tensorflow"] == tf.__version__
  assert r["run"]["strategy"]["replicas"] == 1 and r["run"]["devices"]["cpu_count"] >= 1

  # Same config again: skipped without touching the data; force re-runs (from the feature cache).
  data.calls.clear()
  assert linear_eval.run_linear_eval(config) == r and not data.calls
  again = linear_eval.run_linear_eval(linear_eval.LinearEvalConfig(
      **dict(config.to_dict(), force=True)))
  assert not [c for c in data.calls if c[0] == "data"]
  assert again["layers"] == r["layers"]  # Deterministic given the seed.


def test_feature_cache_misses_whenever_the_features_would_differ(tmp_path, monkeypatch):
  """Through run_linear_eval: the same settings read the cache; a re-export to the same path, a
  different pool_mode, max_features, layer list or export extract anew (no stale numbers)."""
  data = FakeData(num_train=60, num_test=30).install(monkeypatch)
  export = save_export(tmp_path / "export")
  cache = str(tmp_path / "cache")
  runs = iter(range(100))

  def evaluate(**overrides):
    """(results, whether the splits were read) of a fresh evaluation."""
    data.calls.clear()
    config = make_config(tmp_path / f"run{next(runs)}", overrides.pop("hub_module", export),
                         feature_cache_dir=cache, epochs=1, decay_epochs=(), **overrides)
    results = linear_eval.run_linear_eval(config)
    read = sorted({c[1] for c in data.calls if c[0] == "data" and not c[2]})
    return results, read

  first, read = evaluate()
  assert read == ["test", "train"] and len(os.listdir(cache)) == 2
  again, read = evaluate()
  assert read == [] and again["layers"] == first["layers"]  # A hit: nothing read.
  save_export(tmp_path / "export", seed=1)  # Other weights, written to the same path.
  reexported, read = evaluate()
  assert read == ["test", "train"]
  assert reexported["layers"]["block1"]["loss"] != pytest.approx(first["layers"]["block1"]["loss"])
  for overrides in (dict(pool_mode="adaptive_avg"), dict(max_features=50),
                    dict(layers=("block1", "block2"))):
    results, read = evaluate(**overrides)
    assert read == ["test", "train"], overrides
  assert len(os.listdir(cache)) == 2 * 5  # 5 distinct feature sets, train and test each.
  # A copy of an export elsewhere is the same export (core/files.export_fingerprint).
  shutil.copytree(tmp_path / "export", tmp_path / "copy")
  copied, read = evaluate(hub_module=str(tmp_path / "copy"))
  assert read == [] and copied["layers"] == reexported["layers"]
  assert copied["source"]["fingerprint"] == reexported["source"]["fingerprint"]
  _, read = evaluate(max_features=50)
  assert read == []  # Each of them is kept.


def test_the_workdir_feature_cache_outlives_a_failure_and_goes_with_the_results(tmp_path,
                                                                                 monkeypatch):
  """--feature_cache=workdir: features on disk in <workdir>/feature_cache while the evaluation
  runs; after a failure in the heads the same command extracts nothing again, and once
  results.json is written the cache is gone. keep: it stays. With --feature_cache_dir: refused."""
  data = FakeData(num_train=60, num_test=30).install(monkeypatch)
  export = save_export(tmp_path / "export")
  workdir = tmp_path / "eval"
  config = make_config(tmp_path, export, feature_cache="workdir", epochs=1, decay_epochs=())
  probe = linear_eval.probing.probe

  def fail(*args, **kwargs):
    raise RuntimeError("the heads failed")
  monkeypatch.setattr(linear_eval.probing, "probe", fail)
  with pytest.raises(RuntimeError, match="the heads failed"):
    linear_eval.run_linear_eval(config)
  assert len(os.listdir(workdir / "feature_cache")) == 2  # Train and test.
  monkeypatch.setattr(linear_eval.probing, "probe", probe)
  data.calls.clear()
  results = linear_eval.run_linear_eval(config)
  assert not [c for c in data.calls if c[0] == "data" and not c[2]]  # Nothing read again.
  assert sorted(os.listdir(workdir)) == ["results.json"]
  kept = make_config(tmp_path / "kept", export, feature_cache="keep", epochs=1, decay_epochs=())
  assert linear_eval.run_linear_eval(kept)["layers"] == results["layers"]
  assert len(os.listdir(tmp_path / "kept" / "eval" / "feature_cache")) == 2
  both = dataclasses.replace(config, feature_cache_dir=str(tmp_path / "cache"))
  with pytest.raises(ConfigError, match="--feature_cache=workdir and --feature_cache_dir=.*give "
                                        "one"):
    linear_eval.validate_config(both, check_data=False)


def test_random_init_baseline(tmp_path, monkeypatch):
  """The random-init baseline goes through the same path as an export."""
  import models  # pylint: disable=g-import-not-at-top
  FakeData(size=32, num_train=48, num_test=24).install(monkeypatch)
  config = make_config(tmp_path, None, architecture="resnet50", filters_factor=1,
                       eval_preprocessing="resize,-1_to_1", preprocess_params={}, epochs=1,
                       decay_epochs=(), max_features=9000)
  r = linear_eval.run_linear_eval(config)
  assert r["source"] == dict(hub_module="random_init", task="random_init",
                             architecture="resnet50", filters_factor=1, mode="v2",
                             last_relu=True, vit_patch_size=16, vit_position_embedding="learned",
                             eval_preprocessing="resize,-1_to_1",
                             fingerprint=linear_eval.source_fingerprint(config))
  assert r["layer_order"] == models.end_point_names("resnet50")
  assert r["layers"]["block4"]["dim"] == 512 and r["layers"]["block1"]["dim"] == 4096
  assert all(0 <= e["top1"] <= 1 for e in r["layers"].values())


@pytest.mark.parametrize("token_pooling,dim", [("cls_mean", 128), ("cls", 64)])
def test_random_init_vit_probes_every_block_by_its_tokens(tmp_path, monkeypatch, token_pooling,
                                                          dim):
  """A ViT's blocks are probed through the token pooling, which the results record, as is the
  patch size that built the baseline."""
  import models  # pylint: disable=g-import-not-at-top
  FakeData(size=32, num_train=48, num_test=24).install(monkeypatch)
  config = make_config(tmp_path, None, architecture="vit", filters_factor=1, vit_patch_size=8,
                       eval_preprocessing="resize,-1_to_1", preprocess_params={}, epochs=1,
                       decay_epochs=(), max_features=9000, token_pooling=token_pooling)
  r = linear_eval.run_linear_eval(config)
  assert r["source"]["architecture"] == "vit" and r["source"]["vit_patch_size"] == 8
  assert r["config"]["token_pooling"] == token_pooling
  assert r["layer_order"] == models.end_point_names("vit")
  assert {n: e["dim"] for n, e in r["layers"].items()} == dict(
      {f"block{i}": dim for i in range(1, 13)}, final_norm=dim, pre_logits=64)


def test_random_init_on_patches_has_the_patch_methods_strides(tmp_path):
  """On patches, the baseline backbone is built as jigsaw / relative patch location build theirs."""
  import models  # pylint: disable=g-import-not-at-top
  shapes = {}
  for spec in ("resize,-1_to_1", "crop,crop_patches,standardization"):
    config = make_config(tmp_path, None, architecture="resnet50", filters_factor=1,
                         eval_preprocessing=spec)
    rep = linear_eval.load_representation(config)
    shapes[spec] = {k: tuple(v.shape) for k, v in rep.fn(tf.zeros([2, 16, 16, 3])).items()}
  patch_model = models.get_model("resnet50", filters_factor=1, **models.PATCH_STRIDES)
  expected = {k: tuple(v.shape) for k, v in patch_model(tf.zeros([2, 16, 16, 3])).items()}
  assert shapes["crop,crop_patches,standardization"] == expected
  assert expected["block4"] == (2, 2, 2, 512)  # Stride-1 root and block4 on a 16x16 patch.
  assert shapes["resize,-1_to_1"]["block4"] == (2, 1, 1, 512)


@pytest.mark.parametrize("overrides,message", [
    (dict(pool_mode="median"), "pool_mode='median' is not valid; choices: adaptive_max"),
    (dict(eval_model="svm"), "eval_model='svm' is not valid; choices: linear, mlp"),
    (dict(combine_patches="sum"), "combine_patches='sum' is not valid; choices: avg_pool"),
    (dict(on_the_fly=True, train_fraction=0.1), "need the cached protocol"),
    (dict(train_fraction=0.1, examples_per_class=3), "at most one of train_fraction"),
    (dict(train_fraction=0.0), r"train_fraction must be in \(0, 1\]"),
    (dict(knn_k=0), "knn_k must be a positive integer or None"),
    (dict(hub_module=None), "give --hub_module"),
    (dict(hub_module=None, architecture="resnet50"), "set eval_preprocessing"),
    (dict(batch_size=0), "batch_size must be a positive integer, got 0"),
    (dict(decay_epochs=(3, 1)), "decay_epochs must be increasing"),
    (dict(workdir=None), "workdir is required"),
    (dict(on_the_fly=True, probe_lrs=(0.1, 1.0)), r"--on_the_fly trains one head per layer, on "
     r"the whole training split: give one --probe_lrs and one --probe_weight_decays \(got 2 and 1\)"),
    (dict(probe_lrs=()), r"--probe_lrs= must be one or more numbers > 0"),
    (dict(probe_weight_decays=(0.0, -1.0)), r"--probe_weight_decays=0,-1 must be one or more "
     r"numbers >= 0"),
    (dict(feature_dtype="bfloat16"), "feature_dtype='bfloat16' is not valid; choices: float32, "
     "float16"),
])
def test_config_validation(tmp_path, overrides, message):
  with pytest.raises(ConfigError, match=message):
    linear_eval.validate_config(make_config(tmp_path, "/some/export", **overrides))


def test_bad_exports_fail_before_any_data_is_read(tmp_path, monkeypatch):
  """A missing export, a folder that is not one, an export without the representation
  signature: one ConfigError line each, before a split is read, and no results.json."""
  data = FakeData().install(monkeypatch)
  os.makedirs(tmp_path / "not_an_export" / "variables")
  no_rep = save_export(tmp_path / "no_rep", with_representation=False)
  for hub, message in ((tmp_path / "missing", r"missing: no such directory; give the export/"),
                       (tmp_path / "not_an_export", r"is not an export: .* has no "
                                                    r"saved_model.pb \(it holds: variables\)"),
                       (no_rep, r"no_rep: export .* has no 'representation' signature")):
    config = make_config(tmp_path / "wd", str(hub))
    with pytest.raises(ConfigError, match=message):
      linear_eval.run_linear_eval(config)
    assert not [c for c in data.calls if c[0] == "data"]
    assert not os.path.exists(os.path.join(config.workdir, "results.json"))


def test_real_data_pipeline(tmp_path, export_dir):
  """The real `datasets` API on an image folder: both protocols, the export's layers, kNN."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  root = tmp_path / "images"
  for split, per_class in (("train", 8), ("test", 4)):
    for c in range(NUM_CLASSES):
      os.makedirs(root / split / f"class{c}")
      for i in range(per_class):
        pixels = 70 * c + rng.integers(0, 60, size=(12, 12, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"class{c}" / f"{i}.png")
  runs = {}
  for on_the_fly in (False, True):
    config = linear_eval.LinearEvalConfig(
        workdir=str(tmp_path / f"eval_{on_the_fly}"), dataset=f"folder:{root}",
        hub_module=export_dir, eval_preprocessing="resize,-1_to_1",
        preprocessing="resize,flip_lr,-1_to_1", preprocess_params=dict(resize_size=SIZE),
        batch_size=8, eval_batch_size=16, epochs=3, decay_epochs=(), knn_k=3,
        on_the_fly=on_the_fly, max_features=200,
        **({} if not on_the_fly else dict(probe_lrs=(0.1,), probe_weight_decays=(0.0,))))
    runs[on_the_fly] = linear_eval.run_linear_eval(config)
  for r in runs.values():
    assert r["layer_order"] == LAYERS
    assert r["dataset"]["num_train_examples"] == 24 and r["dataset"]["num_val_examples"] == 12
    assert r["layers"]["block1"]["knn_top1"] > 0.6  # Classes differ in brightness.
  assert [runs[True]["layers"][n]["knn_top1"] for n in LAYERS] == [
      runs[False]["layers"][n]["knn_top1"] for n in LAYERS]


def test_a_budget_too_small_stops_before_extraction(tmp_path, monkeypatch, export_dir):
  """Features that would be held in memory beyond --probe_memory_gb, and a layer whose heads
  cannot fit it even alone, are refused in one line before any image is read."""
  data = FakeData().install(monkeypatch)
  config = make_config(tmp_path / "a", export_dir, probe_memory_gb=1e-4)
  with pytest.raises(ConfigError, match=r"the features of 360 examples \(.* per example, "
                                        r"float32\) take .* GiB in memory, over the probes' "
                                        r"budget .*--feature_cache=workdir"):
    linear_eval.run_linear_eval(config)
  on_disk = make_config(tmp_path / "b", export_dir, probe_memory_gb=1e-5, feature_cache="keep")
  with pytest.raises(ConfigError, match=r"layer block1: its 1 linear head\(s\) on \d+ features "
                                        r"for 3 classes .* over the probes' memory budget of "
                                        r"0.00 GiB; raise --probe_memory_gb"):
    linear_eval.run_linear_eval(on_disk)
  assert not [c for c in data.calls if c[0] == "data"]
  assert not os.path.exists(tmp_path / "b" / "eval" / "feature_cache")
