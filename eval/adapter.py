"""Backbones made elsewhere on the suite's per-layer table: an adapter file names the end points
of an outside Keras model (a `.keras` file: keras.applications, a keras-hub backbone saved with
`.save(...)`, your own) or of a SavedModel's signature, and `adapt` writes an export of the
suite's form (training/export.py: a `representation` signature of every end point, in depth
order, and export_info.json), which every evaluation then takes as --hub_module.

An adapter is a TOML file:

  name = "keras_resnet50"              # the architecture results and reports show (required)
  custom_modules = ["keras_hub"]       # imported before loading, to register their classes
  input_shape = [224, 224, 3]          # the images it takes (default: the model's input shape)
  signature = "serving_default"        # SavedModels: the signature whose outputs are named
  eval_preprocessing = "resize_small,central_crop"   # the evaluation's input (required)
  [preprocess_config]                  # that preprocessing's sizes (datasets.PreprocessConfig)
  smaller_size = 256
  crop_size = 224
  [input]                              # what the model wants of the images the suite makes
  scale = 255.0                        # (x * scale - mean) / std per channel, channels reversed
  mean = [103.939, 116.779, 123.68]    # first with reverse_channels (RGB to BGR)
  std = [1.0, 1.0, 1.0]
  reverse_channels = true
  [end_points]                         # in depth order: end point = a layer's name (Keras) or
  stage1 = "conv2_block3_out"          # an output of the signature (SavedModel)
  stage2 = "conv3_block4_out"

The suite's images are in [0, 1] unless the preprocessing scales them ('-1_to_1',
'standardization'). End points of rank 3 are tokens [B, T, D]: the probes pool them as a ViT's
(eval/pooling.py, --token_pooling), the class token first where there is one.
"""

import dataclasses
import importlib
import os
from typing import Any, Dict, List, Optional, Tuple

import keras
import tensorflow as tf

from core import architectures
from core import files
from core.errors import ConfigError
import datasets
from eval import linear_eval
from training import export as export_lib

TASK = "adapted"  # export_info.json's task of an adapted backbone.
KERAS_SUFFIXES = (".keras",)
_KEYS = ("name", "custom_modules", "input_shape", "signature", "eval_preprocessing",
         "preprocess_config", "input", "end_points")
_INPUT_KEYS = ("scale", "mean", "std", "reverse_channels")
# What an export's directory holds (a SavedModel and export_info.json): an adapted export is
# replaced only where its directory holds nothing else.
EXPORT_FILES = ("saved_model.pb", "variables", "assets", "fingerprint.pb", files.EXPORT_INFO_FILE)


@dataclasses.dataclass(frozen=True)
class Adapter:
  name: str
  end_points: Dict[str, str]  # End point -> layer (Keras) or signature output, by depth.
  eval_preprocessing: str
  preprocess_config: Dict[str, Any]
  custom_modules: Tuple[str, ...] = ()
  input_shape: Optional[Tuple[Optional[int], ...]] = None
  signature: str = "serving_default"
  scale: float = 1.0
  mean: Tuple[float, ...] = ()
  std: Tuple[float, ...] = ()
  reverse_channels: bool = False

  def prepare(self, images: tf.Tensor) -> tf.Tensor:
    """The suite's images as the model wants them."""
    x = tf.cast(images, tf.float32)
    if self.reverse_channels:
      x = x[..., ::-1]
    x = x * self.scale
    if self.mean:
      x = x - tf.constant(self.mean, tf.float32)
    if self.std:
      x = x / tf.constant(self.std, tf.float32)
    return x


def read_adapter(path: str) -> Adapter:
  """The adapter in the TOML file at `path`; ConfigError naming the bad entry."""
  try:
    data = files.read_toml(path, "adapter")
  except ValueError as e:
    raise ConfigError(str(e)) from None

  def fail(message):
    raise ConfigError(f"adapter {path}: {message}")

  unknown = [k for k in data if k not in _KEYS]
  if unknown:
    fail(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_KEYS)}")
  for key in ("name", "eval_preprocessing"):
    if not isinstance(data.get(key), str) or not data[key].strip():
      fail(f"{key} must be a non-empty string")
  if data["name"] in architectures.ARCHITECTURES:
    fail(f"name = {data['name']!r} is one of the suite's own architectures; name the outside "
         f"model otherwise (e.g. keras_{data['name']})")
  end_points = data.get("end_points")
  if not isinstance(end_points, dict) or not end_points or not all(
      isinstance(v, str) and v for v in end_points.values()):
    fail("[end_points] must map each end point's name to a layer or output name, in depth order")
  if architectures.LOGITS in end_points:
    fail(f"{architectures.LOGITS!r} is the model's own output in an export; name the end point "
         "otherwise")
  given = data.get("input", {})
  bad = [k for k in given if k not in _INPUT_KEYS]
  if bad:
    fail(f"[input] has unknown key(s) {', '.join(bad)}; valid keys: {', '.join(_INPUT_KEYS)}")
  shape = data.get("input_shape")
  if shape is not None and (not isinstance(shape, list) or len(shape) != 3 or not all(
      d is None or (isinstance(d, int) and d > 0) for d in shape)):
    fail(f"input_shape = {shape!r}: [height, width, channels], positive integers")
  modules = data.get("custom_modules", [])
  if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
    fail(f"custom_modules = {modules!r}: a list of module names")
  try:
    mean = tuple(float(v) for v in given.get("mean", ()))
    std = tuple(float(v) for v in given.get("std", ()))
    scale = float(given.get("scale", 1.0))
  except (TypeError, ValueError):
    fail("[input] scale, mean and std must be numbers (mean and std one per channel)")
  if any(s == 0 for s in std):
    fail(f"[input] std = {list(std)}: no channel's deviation may be 0")
  params = dict(data.get("preprocess_config", {}))
  try:
    datasets.validate_spec(data["eval_preprocessing"], linear_eval.preprocess_config_of(params))
  except (TypeError, ValueError) as e:
    fail(f"eval_preprocessing = {data['eval_preprocessing']!r} with [preprocess_config] "
         f"{params}: {e}")
  return Adapter(
      name=data["name"], end_points=dict(end_points),
      eval_preprocessing=data["eval_preprocessing"],
      preprocess_config=params,
      custom_modules=tuple(modules), input_shape=tuple(shape) if shape else None,
      signature=str(data.get("signature", "serving_default")), scale=scale, mean=mean, std=std,
      reverse_channels=bool(given.get("reverse_channels", False)))


class KerasBackbone(keras.Model):
  """An outside Keras model seen as a suite backbone: `model(images)` -> {end point: the named
  layer's output, ..., logits: the model's own output (the last end point's where it is one of
  them)}; `probed_end_points`: those the probes see (logits only where it is none of them)."""

  def __init__(self, model: keras.Model, adapter: Adapter):
    super().__init__(name=adapter.name)
    self.adapter = adapter
    missing = [layer for layer in adapter.end_points.values() if not _has_layer(model, layer)]
    if missing:
      names = [layer.name for layer in model.layers]
      raise ConfigError(f"the model has no layer(s) {', '.join(map(repr, missing))}; its layers: "
                        f"{', '.join(names[:60])}{' ...' if len(names) > 60 else ''}")
    try:
      outputs = {name: model.get_layer(layer).output
                 for name, layer in adapter.end_points.items()}
    except (AttributeError, ValueError) as e:
      raise ConfigError(f"the layers' outputs of {model.name} cannot be reached ({e}): the "
                        "adapter needs a functional Keras model (keras.applications and "
                        "keras-hub backbones are)") from None
    own = model.outputs[0] if len(model.outputs) == 1 else None
    # The model's own output is probed as `logits` where it is not one of the end points.
    self.probed_end_points = list(adapter.end_points)
    if own is None or any(own is t for t in outputs.values()):
      own = outputs[self.probed_end_points[-1]]
    else:
      self.probed_end_points.append(architectures.LOGITS)
    self.inner = keras.Model(model.inputs, {**outputs, architectures.LOGITS: own})

  def call(self, images, training=None):
    out = self.inner(self.adapter.prepare(images), training=False)
    return {name: out[name] for name in [*self.adapter.end_points, architectures.LOGITS]}


def _has_layer(model, name: str) -> bool:
  try:
    model.get_layer(name)
    return True
  except ValueError:
    return False


class SignatureBackbone(tf.Module):
  """A SavedModel's signature seen as a suite backbone: `model(images)` -> {end point: the named
  output, ..., logits: the last end point's}; `probed_end_points`: the end points."""

  def __init__(self, loaded, adapter: Adapter):
    super().__init__(name=adapter.name)
    self.loaded, self.adapter = loaded, adapter
    signatures = dict(loaded.signatures)
    if adapter.signature not in signatures:
      raise ConfigError(f"the SavedModel has no signature {adapter.signature!r}; its signatures: "
                        f"{', '.join(sorted(signatures)) or 'none'}")
    self.signature = signatures[adapter.signature]
    _, inputs = self.signature.structured_input_signature
    if len(inputs) != 1:
      raise ConfigError(f"signature {adapter.signature!r} takes {sorted(inputs)}; an adapted "
                        "backbone takes one input, the images")
    self.input_name = next(iter(inputs))
    self.probed_end_points = list(adapter.end_points)
    outputs = list(self.signature.structured_outputs)
    missing = [o for o in adapter.end_points.values() if o not in outputs]
    if missing:
      raise ConfigError(f"signature {adapter.signature!r} has no output(s) "
                        f"{', '.join(map(repr, missing))}; its outputs: {', '.join(outputs)}")

  def __call__(self, images, training=None):
    del training
    out = self.signature(**{self.input_name: self.adapter.prepare(images)})
    ends = {name: out[output] for name, output in self.adapter.end_points.items()}
    return {**ends, architectures.LOGITS: ends[list(ends)[-1]]}


def load_backbone(model_path: str, adapter: Adapter):
  """The outside model at `model_path` (a .keras file or a SavedModel directory) as a backbone
  (KerasBackbone or SignatureBackbone); ConfigError where it cannot be."""
  for module in adapter.custom_modules:
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise ConfigError(f"custom module {module!r} of the adapter does not import: {e}") from None
  if model_path.endswith(KERAS_SUFFIXES):
    if not os.path.isfile(model_path):
      raise ConfigError(f"no Keras model file at {model_path!r}")
    try:
      model = keras.saving.load_model(model_path, compile=False)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"Keras cannot load {model_path!r} ({e}); a model of a library's own "
                        "classes needs that library in the adapter's custom_modules") from None
    return KerasBackbone(model, adapter)
  if os.path.isfile(os.path.join(model_path, "saved_model.pb")):
    return SignatureBackbone(tf.saved_model.load(model_path), adapter)
  raise ConfigError(f"{model_path!r} is neither a Keras model file ({', '.join(KERAS_SUFFIXES)}) "
                    "nor a SavedModel directory (with saved_model.pb)")


def _input_shape(backbone, adapter: Adapter) -> List[Optional[int]]:
  if adapter.input_shape is not None:
    return list(adapter.input_shape)
  if isinstance(backbone, KerasBackbone):
    shape = backbone.inner.inputs[0].shape
    return [None if d is None else int(d) for d in shape[1:]]
  _, inputs = backbone.signature.structured_input_signature
  return inputs[backbone.input_name].shape.as_list()[1:]


def adapt(model_path: str, adapter_path: str, export_dir: str) -> Dict[str, Any]:
  """Writes the export of the outside model at `model_path` that the adapter at `adapter_path`
  names the end points of to `export_dir` (replacing an earlier adapted export there, and
  refusing a directory that holds anything else); returns its export_info. The images' shape
  must be known (the model's input, or the adapter's input_shape)."""
  if os.path.exists(export_dir) and (not os.path.isdir(export_dir) or os.listdir(export_dir)):
    held = files.read_json(os.path.join(export_dir, files.EXPORT_INFO_FILE))
    others = sorted(set(os.listdir(export_dir)) - set(EXPORT_FILES)) \
        if os.path.isdir(export_dir) else []
    if not isinstance(held, dict) or held.get("task") != TASK or others:
      raise ConfigError(f"{export_dir!r} exists and is not an adapted backbone's export alone"
                        f"{' (it holds ' + ', '.join(others[:5]) + ')' if others else ''}: "
                        "nothing was written; give another directory")
  adapter = read_adapter(adapter_path)
  backbone = load_backbone(model_path, adapter)
  shape = _input_shape(backbone, adapter)
  if len(shape) != 3 or any(d is None for d in shape):
    raise ConfigError(f"the model takes images of {shape}: give input_shape = [H, W, C] in the "
                      "adapter")
  for key, values in (("mean", adapter.mean), ("std", adapter.std)):
    if len(values) not in (0, 1, shape[-1]):
      raise ConfigError(f"adapter {adapter_path}: [input] {key} has {len(values)} values for "
                        f"images of {shape[-1]} channels (give one, or one per channel)")
  info = dict(task=TASK, architecture=adapter.name, filters_factor=None,
              model=os.path.abspath(model_path), adapter=os.path.abspath(adapter_path),
              eval_preprocessing=adapter.eval_preprocessing,
              preprocess_config=adapter.preprocess_config)
  export_lib.export(backbone, export_dir, shape, info)
  return files.read_export_info(export_dir)

