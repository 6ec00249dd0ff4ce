"""Backbones made elsewhere (eval/adapter.py) on a randomly initialised library backbone
(keras.applications' ResNet-50, nothing downloaded): the shipped adapter's layers exist, an
adapted export reloads with the model's own layer outputs, a SavedModel's signature adapts too,
the per-layer probes run on it, and bad adapters and output folders are refused before anything
is written."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.errors import ConfigError
from eval import adapter as adapter_lib
from eval import cka
from eval import fine_tune
from eval import linear_eval
from tests.conftest import REPO_ROOT

LAYERS = {"after_root": "pool1_pool", "block1": "conv2_block3_out",
          "block2": "conv3_block4_out", "block3": "conv4_block6_out",
          "block4": "conv5_block3_out"}


def _adapter_text(end_points=LAYERS, **entries):
  fields = dict(name='"keras_resnet50"', input_shape="[32, 32, 3]",
                eval_preprocessing='"resize"')
  fields.update(entries)
  lines = [f"{k} = {v}" for k, v in fields.items()]
  lines += ["[preprocess_config]", "resize_size = 32",
            "[input]", "reverse_channels = true", "scale = 255.0",
            "mean = [103.939, 116.779, 123.68]", "[end_points]"]
  lines += [f'{k} = "{v}"' for k, v in end_points.items()]
  return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
  """A random-init keras.applications ResNet-50 saved to a .keras file."""
  keras.utils.set_random_seed(0)
  model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
  path = str(tmp_path_factory.mktemp("keras") / "resnet50.keras")
  model.save(path)
  return model, path


def _write(tmp_path, text, name="adapter.toml"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_the_shipped_adapter_names_layers_of_keras_resnet50(resnet):
  model, _ = resnet
  adapter = adapter_lib.read_adapter(os.path.join(REPO_ROOT, "configs", "adapters",
                                                  "keras_resnet50.toml"))
  assert list(adapter.end_points) == list(LAYERS) and adapter.end_points == LAYERS
  assert adapter.input_shape == (224, 224, 3) and adapter.preprocess_config["crop_size"] == 224
  backbone = adapter_lib.KerasBackbone(model, adapter)
  assert list(backbone(tf.zeros([1, 32, 32, 3]))) == [*LAYERS, "logits"]


def test_an_adapted_export_reloads_with_the_models_layer_outputs(resnet, tmp_path):
  model, path = resnet
  info = adapter_lib.adapt(path, _write(tmp_path, _adapter_text()), str(tmp_path / "export"))
  assert info["task"] == "adapted" and info["architecture"] == "keras_resnet50"
  assert info["end_points"] == list(LAYERS) and info["input_shape"] == [32, 32, 3]
  assert info["eval_preprocessing"] == "resize"
  images = np.random.default_rng(0).uniform(0, 1, size=(2, 32, 32, 3)).astype(np.float32)
  # What the model sees: Caffe's input, BGR in 0-255 less the mean.
  caffe = images[..., ::-1] * 255.0 - np.float32([103.939, 116.779, 123.68])
  inner = keras.Model(model.inputs, [model.get_layer(l).output for l in LAYERS.values()])
  want = dict(zip(LAYERS, inner(caffe)))
  loaded = tf.saved_model.load(str(tmp_path / "export"))
  got = loaded.signatures["representation"](images=tf.constant(images))
  for name in LAYERS:
    np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), rtol=1e-4, atol=1e-4)
  # A SavedModel's signature, its outputs renamed, adapts too (here the export's own, taking
  # the images as they are: no [input] in this adapter).
  renamed = {f"stage{i}": name for i, name in enumerate(LAYERS)}
  plain = _adapter_text(renamed, signature='"representation"')
  plain = plain.split("[input]")[0] + "[end_points]" + plain.split("[end_points]")[1]
  again = adapter_lib.adapt(str(tmp_path / "export"), _write(tmp_path, plain, "plain.toml"),
                            str(tmp_path / "again"))
  assert again["end_points"] == list(renamed)
  out = tf.saved_model.load(str(tmp_path / "again")).signatures["representation"](
      images=tf.constant(images))
  for i, name in enumerate(LAYERS):
    np.testing.assert_allclose(out[f"stage{i}"].numpy(), want[name].numpy(), rtol=1e-4,
                               atol=1e-4)


def test_the_probes_run_on_an_adapted_export(resnet, tmp_path, shapes_data_dir):
  _, path = resnet
  export = str(tmp_path / "export")
  adapter_lib.adapt(path, _write(tmp_path, _adapter_text()), export)
  config = linear_eval.LinearEvalConfig(
      workdir=str(tmp_path / "probe"), hub_module=export, dataset="shapes_small",
      data_dir=shapes_data_dir, train_split="train[:64]", val_split="test[:32]", epochs=2.0,
      batch_size=32, pool_mode="adaptive_max", max_features=512)
  results = linear_eval.run_linear_eval(config)
  assert list(results["layers"]) == list(LAYERS)
  assert results["source"]["architecture"] == "keras_resnet50"
  assert results["source"]["task"] == "adapted"
  assert results["source"]["eval_preprocessing"] == "resize"
  for layer in results["layers"].values():
    assert 0.0 <= layer["top1"] <= 1.0
  # What rebuilds the backbone from the suite's architectures refuses it before any work.
  tune = fine_tune.FineTuneConfig(workdir=str(tmp_path / "tune"), hub_module=export,
                                  train_fraction=0.5)
  with pytest.raises(ConfigError, match=r"\(keras_resnet50\) is not one of the suite's .* "
                     "fine-tuning rebuilds it"):
    fine_tune.validate_config(tune, check_data=False)
  twin = linear_eval.LinearEvalConfig(workdir=str(tmp_path / "cka"), hub_module=export,
                                      cka_other="random_init", eval_batch_size=64)
  with pytest.raises(ConfigError, match=r"--cka_other=random_init \(its random-init twin\)"):
    cka.validate_config(twin, check_data=False)
  assert not (tmp_path / "tune").exists() and not (tmp_path / "cka").exists()


def test_bad_adapters_and_folders_are_refused_before_anything_is_written(resnet, tmp_path):
  _, path = resnet
  for text, message in (
      (_adapter_text({"block1": "conv2_block9_out"}),
       r"the model has no layer\(s\) 'conv2_block9_out'; its layers: input_layer"),
      (_adapter_text(name='"resnet50"'), "is one of the suite's own architectures"),
      (_adapter_text(eval_preprocessing='"resize,flip"'), "unknown preprocessing op 'flip'"),
      ("colour = 1\n" + _adapter_text(), r"unknown key\(s\) colour"),
      (_adapter_text(input_shape="[32, 32]"), r"input_shape = \[32, 32\]"),
      (_adapter_text({"logits": "conv2_block3_out"}), "'logits' is the model's own output"),
      (_adapter_text().replace("mean = [103.939, 116.779, 123.68]", "mean = [0.5, 0.5]"),
       r"\[input\] mean has 2 values for images of 3 channels"),
  ):
    with pytest.raises(ConfigError, match=message):
      adapter_lib.adapt(path, _write(tmp_path, text), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()
  # A folder with anything but an adapted export in it is kept as it is.
  kept = tmp_path / "kept"
  kept.mkdir()
  (kept / "results.json").write_text(json.dumps({"mine": 1}))
  with pytest.raises(ConfigError, match="exists and is not an adapted backbone's export"):
    adapter_lib.adapt(path, _write(tmp_path, _adapter_text()), str(kept))
  assert os.listdir(kept) == ["results.json"]
  # Nor is an adapted export that holds anything beside it (probes written inside it, say).
  for _ in range(2):  # An adapted export alone is replaced.
    adapter_lib.adapt(path, _write(tmp_path, _adapter_text()), str(tmp_path / "export"))
  (tmp_path / "export" / "linear_eval").mkdir()
  with pytest.raises(ConfigError, match=r"not an adapted backbone's export alone \(it holds "
                     "linear_eval\)"):
    adapter_lib.adapt(path, _write(tmp_path, _adapter_text()), str(tmp_path / "export"))
  assert (tmp_path / "export" / "linear_eval").is_dir()
  with pytest.raises(ConfigError, match="cannot read adapter .*missing.toml: No such file"):
    adapter_lib.adapt(path, str(tmp_path / "missing.toml"), str(tmp_path / "new"))
  with pytest.raises(ConfigError, match="neither a Keras model file"):
    adapter_lib.adapt(str(tmp_path), _write(tmp_path, _adapter_text()), str(tmp_path / "new"))
