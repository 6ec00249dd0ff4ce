"""Supervised baseline: the backbone's logits trained with the dataset's labels (the upper reference)."""

import tensorflow as tf

from methods import base
import models

USES_LABELS = True  # Trains on the dataset's labels: at least two classes (training/validation.py).


def validate(config) -> None:
  del config  # Any single-image preprocessing works; build_model checks the input rank.


def build_model(config, image_shape, num_classes):
  base.require_single_images(image_shape, "supervised training")
  model = models.get_model(config.architecture, num_classes=num_classes,
                           **base.backbone_kwargs(config))
  model(tf.zeros([1, *image_shape]), training=False)
  return model


serving_input_shape = base.single_serving_input_shape


def model_fn(model, batch, mode, config):
  del config
  end_points = model(batch["image"], training=mode == base.TRAIN)
  return base.classification_spec(end_points["logits"], batch.get("label"), mode, end_points)
