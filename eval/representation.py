"""The frozen backbone under evaluation: a callable `images -> {end point: tensor}`, its layers.

Both an export (`load_export`) and the random-init baseline (`random_init`) become a
`Representation`, so the rest of the evaluation cannot tell them apart.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging
import tensorflow as tf

from core import architectures
from core import files
from core import options
from core import specs
from core.files import EXPORT_INFO_FILE

REPRESENTATION_SIGNATURE = "representation"

RepresentationFn = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


@dataclasses.dataclass
class Representation:
  """`fn(images) -> {end point: tensor}`; `layers`: the end points to evaluate, by depth.

  `info` describes the source for results.json: `source` (export path or "random_init"), `task`,
  `architecture`, `filters_factor`, `mode`, and where known `input_shape`, `eval_preprocessing`.
  `fingerprint` identifies the weights for the feature cache.
  """
  fn: RepresentationFn
  layers: List[str]
  info: Dict[str, Any] = dataclasses.field(default_factory=dict)
  fingerprint: str = ""

  def __call__(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    return self.fn(images)

  def select(self, layers: Optional[Sequence[str]]) -> "Representation":
    """The same representation restricted to `layers` (None: all), in depth order."""
    if layers is None:
      return self
    unknown = [name for name in layers if name not in self.layers]
    if unknown:
      raise ValueError(f"unknown layers {unknown}; valid choices: {', '.join(self.layers)}")
    return dataclasses.replace(self, layers=[name for name in self.layers if name in layers])


def export_dir_of(hub_module: str) -> str:
  """The export directory that `hub_module` names: an export, or a pretext workdir holding one."""
  inside = os.path.join(hub_module, files.EXPORT_DIR)
  if not os.path.exists(os.path.join(hub_module, "saved_model.pb")) and os.path.exists(
      os.path.join(inside, "saved_model.pb")):
    return inside
  return hub_module


def load_export(path: str) -> Representation:
  """The `representation` signature of a backbone export (a SavedModel directory, or a pretext
  workdir holding one in export/)."""
  if not path:
    raise ValueError("no export path given (hub_module is empty)")
  path = export_dir_of(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"no backbone export at {path!r}: the directory does not exist. Point hub_module at the "
        "export/ folder that pretext training writes in its workdir.")
  if not os.path.exists(os.path.join(path, "saved_model.pb")):
    raise FileNotFoundError(
        f"{path!r} is not a SavedModel export (it has no saved_model.pb); "
        f"it contains: {sorted(os.listdir(path))[:20]}")
  info = files.read_export_info(path, missing_ok=True)
  loaded = tf.saved_model.load(path)
  signatures = dict(loaded.signatures)
  if REPRESENTATION_SIGNATURE not in signatures:
    raise ValueError(
        f"export {path!r} has no {REPRESENTATION_SIGNATURE!r} signature; its signatures are: "
        f"{sorted(signatures) or 'none'}. Re-export the backbone with a representation signature.")
  signature = signatures[REPRESENTATION_SIGNATURE]
  _, input_kwargs = signature.structured_input_signature
  if list(input_kwargs) != ["images"]:
    raise ValueError(f"the representation signature of {path!r} must take one input 'images'; "
                     f"it takes {sorted(input_kwargs)}")
  outputs = list(signature.structured_outputs)
  layers = info.get("end_points")
  if layers is None:
    logging.warning("%s has no %s; evaluating the signature's outputs in name order: %s",
                    path, EXPORT_INFO_FILE, sorted(outputs))
    layers = sorted(outputs)
  missing = [name for name in layers if name not in outputs]
  if missing:
    raise ValueError(f"{EXPORT_INFO_FILE} of {path!r} lists end points {missing} that the "
                     f"representation signature does not return; it returns {sorted(outputs)}")
  if "input_shape" not in info:
    info["input_shape"] = input_kwargs["images"].shape.as_list()[1:]

  def fn(images):
    # `loaded` is kept alive by this closure: its variables die with it.
    return dict(loaded.signatures[REPRESENTATION_SIGNATURE](images=tf.cast(images, tf.float32)))

  info = dict(info, source=os.path.abspath(path))
  for key in ("task", "architecture", "filters_factor", "mode"):
    info.setdefault(key, None)
  return Representation(fn=fn, layers=list(layers), info=info,
                        fingerprint=files.export_fingerprint(path))


def backbone_strides(eval_spec: str) -> Dict[str, Any]:
  """The strides of a backbone that sees the inputs of `eval_spec`: on patches, those the patch
  methods train with (models.PATCH_STRIDES), so that a random-init baseline and a trained patch
  backbone differ in their weights only."""
  import models  # pylint: disable=g-import-not-at-top
  return dict(models.PATCH_STRIDES) if specs.makes_patches(eval_spec) else {}


def backbone_model(info: Dict[str, Any], eval_spec: str, filters_factor: Optional[int] = None,
                   sync_bn: bool = False):
  """A new (unbuilt) backbone with the facts of an export's `info` (architecture, width, version,
  last ReLU; the patch strides where `eval_spec` cuts patches), without a head; `filters_factor`
  over the info's."""
  import models  # pylint: disable=g-import-not-at-top
  settings = {k: info[k] for k in architectures.MODEL_SETTINGS if info.get(k) is not None}
  return models.get_model(info["architecture"], num_classes=None,
                          filters_factor=filters_factor or info.get("filters_factor"),
                          sync_bn=sync_bn, **settings, **backbone_strides(eval_spec))


def random_init(architecture: str, filters_factor: int = 4, mode: Optional[str] = None,
                seed: int = 0, **model_kwargs) -> Representation:
  """A freshly initialised backbone from `models.get_model` (the random-init baseline)."""
  import keras  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(seed)
  kwargs = dict(model_kwargs, num_classes=None, filters_factor=filters_factor)
  if mode is not None:
    kwargs["mode"] = mode
  model = models.get_model(architecture, **kwargs)
  # Without a head (num_classes=None) there are no logits to probe.
  layers = [name for name in models.end_point_names(architecture) if name != "logits"]

  def fn(images):
    return dict(model(tf.cast(images, tf.float32), training=False))

  fn.model = model  # For callers that want the variables.
  info = dict(source=options.RANDOM_INIT, task=options.RANDOM_INIT, architecture=architecture,
              filters_factor=filters_factor, mode=mode,
              **{k: v for k, v in model_kwargs.items() if k in architectures.MODEL_SETTINGS})
  return Representation(fn=fn, layers=layers, info=info, fingerprint=random_init_fingerprint(
      architecture, filters_factor, mode, seed, model_kwargs))


def random_init_fingerprint(architecture: str, filters_factor, mode, seed: int,
                            model_kwargs: Dict[str, Any]) -> str:
  """What identifies a random-init backbone (`random_init`'s arguments): its weights follow from
  them."""
  text = json.dumps(dict(architecture=architecture, filters_factor=filters_factor, mode=mode,
                         seed=seed, kwargs=model_kwargs), sort_keys=True, default=str)
  return f"{options.RANDOM_INIT}-" + hashlib.sha256(text.encode()).hexdigest()[:16]
