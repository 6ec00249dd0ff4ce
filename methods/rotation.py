"""Rotation prediction (Gidaris et al. 2018): classify which of the four 90-degree rotations
was applied. Every image of the batch is seen in all four rotations; the `rotate` preprocessing op
stacks them ([B,4,H,W,C], labels [B,4] = 0..3), and the backbone runs on all 4B images at once.
"""

import tensorflow as tf

from methods import base
import models

NUM_ROTATIONS = 4


def validate(config) -> None:
  base.require_op(config, "rotate", "resize,crop,flip_lr,-1_to_1,rotate")


def build_model(config, image_shape, num_classes):
  del num_classes  # The pretext task has its own four classes.
  if len(image_shape) != 4 or image_shape[0] != NUM_ROTATIONS:
    raise ValueError(f"rotation expects per-example images [4,H,W,C] from the 'rotate' op, got "
                     f"{list(image_shape)}")
  model = models.get_model(config.architecture, num_classes=NUM_ROTATIONS,
                           **base.backbone_kwargs(config))
  model(tf.zeros([1, *image_shape[1:]]), training=False)
  return model


serving_input_shape = base.stacked_serving_input_shape


def model_fn(model, batch, mode, config):
  del config
  images = batch["image"]
  end_points = model(base.flatten_stacked(images), training=mode == base.TRAIN)
  labels = batch.get("label")
  if labels is not None:
    labels = tf.reshape(labels, [-1])
  return base.classification_spec(end_points["logits"], labels, mode, end_points)
