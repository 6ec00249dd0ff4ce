"""SavedModel export of a trained backbone, the form evaluation (and TF-Hub) loads.

Signatures, each taking `images` float32 [batch, H, W, C] of any batch size, preprocessed as the
method's evaluation preprocessing (recorded in export_info.json):
  serving_default: {'logits': the pretext (or supervised) output}
  representation: {end point name: tensor} for every end point, in the backbone's depth order.

Beside it, export_info.json, which every evaluation of the export reads:

  {"task", "architecture", "filters_factor", the model settings of core/architectures.py
   (MODEL_SETTINGS: "mode", "last_relu", "vit_patch_size", "vit_position_embedding"),
   "network": "online" | "teacher" (methods with a teacher: the network exported),
   "dataset", "eval_preprocessing": the preprocessing an evaluation applies to its images,
   "preprocess_config": every preprocessing setting of the run, "input_shape": the shape of one
   example the signatures take, "end_points": the probed end points in depth order, "step": the
   checkpoint's step, "run": the run record (training/run_record.py); the exports of kept
   checkpoints (<workdir>/exports/step_<N>) also "epoch", "pretext_metrics" and "pretext_split"
   (null without --run_eval)}
"""

import json
import os
import shutil
from typing import Sequence

import tensorflow as tf

from core import architectures
from core import files
from methods import base


class _ExportModule(tf.Module):

  def __init__(self, model, image_shape: Sequence[int]):
    super().__init__()
    self.model = model
    # The backbone alone, under a name of its own in the export's variables, so that a backbone
    # rebuilt from export_info.json reads its weights from there (eval/fine_tune.py).
    self.backbone = base.backbone_of(model)
    spec = tf.TensorSpec([None, *image_shape], tf.float32, name="images")
    self.serve = tf.function(self._serve, input_signature=[spec])
    self.representation = tf.function(self._representation, input_signature=[spec])

  # Outputs are float32 whatever the model computes in (mixed precision).
  def _serve(self, images):
    return {"logits": tf.cast(self.model(images, training=False)["logits"], tf.float32)}

  def _representation(self, images):
    return {k: tf.cast(v, tf.float32) for k, v in self.model(images, training=False).items()}


def describe(config, image_shape: Sequence[int]) -> dict:
  """What export_info.json says of the backbone that a pretext run of `config` exports, for
  examples of `image_shape` as its pipeline yields them (before the run: the plan; after it,
  with the step and the run record, the export's). `input_shape` is the export's input."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import datasets  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from core import specs  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config.task)
  teacher = {"network": "teacher" if config.export_teacher else "online"} \
      if hasattr(method, "TEACHER") else {}
  return {**teacher,
      "task": config.task, "architecture": config.architecture,
      "filters_factor": config.resolved_filters_factor(),
      **{name: getattr(config, name) for name in architectures.MODEL_SETTINGS},
      "dataset": config.dataset,
      "eval_preprocessing": specs.representation_spec(config.preprocessing),
      "preprocess_config": dataclasses.asdict(datasets.PreprocessConfig.of(config)),
      "input_shape": list(config.serving_input_shape or
                          method.serving_input_shape(tuple(image_shape))),
  }


def export(model, export_dir: str, image_shape: Sequence[int], info: dict) -> str:
  """Writes the SavedModel of `model` (a method's model, or the network of it that an export
  serves: methods/base.exported_model) and export_info.json to `export_dir`, replacing an earlier
  export. Its `end_points` (those the probes see, in depth order) are the model's
  `probed_end_points` where it has them (MAE's leave out its reconstruction), else every output.

  The new export is written beside the old one and swapped in with renames, so an interrupted
  export never leaves a half-written directory under `export_dir`.
  """
  export_dir = export_dir.rstrip("/")
  tmp_dir, old_dir = f"{export_dir}.tmp-{os.getpid()}", f"{export_dir}.old"
  for d in (tmp_dir, old_dir):
    if os.path.exists(d):
      shutil.rmtree(d)
  module = _ExportModule(model, image_shape)
  end_points = list(model(tf.zeros([1, *image_shape]), training=False).keys())
  tf.saved_model.save(module, tmp_dir, signatures={"serving_default": module.serve,
                                                   "representation": module.representation})
  end_points = getattr(model, "probed_end_points", None) or end_points
  info = dict(info, input_shape=list(image_shape), end_points=list(end_points))
  with open(os.path.join(tmp_dir, files.EXPORT_INFO_FILE), "w") as f:
    json.dump(info, f, indent=2, sort_keys=True)
  if os.path.exists(export_dir):
    os.rename(export_dir, old_dir)
  os.rename(tmp_dir, export_dir)
  if os.path.exists(old_dir):
    shutil.rmtree(old_dir)
  return export_dir


def load_export_info(export_dir: str) -> dict:
  """The export's export_info.json (FileNotFoundError where it has none)."""
  return files.read_export_info(export_dir)
