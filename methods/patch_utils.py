"""What the patch methods (jigsaw, relative_patch_location) share: the model and its head.

The data pipeline's `crop_patches` op yields P = splits_per_side^2 patches per image, [B,P,h,w,C].
The backbone runs on all B*P patches as one batch; its logits layer (`embed_dim` units) is the
per-patch embedding, so `model(patches)` on single patches [N,h,w,C] returns the backbone's end
points with `logits` = the embedding (what the export serves). The pretext head, as in the 2019
code (AlexNet's fc7-fc8), classifies a concatenation of patch embeddings (P of them for jigsaw, 2
for relative patch location): a fully connected layer (`head_units`), batch norm, ReLU, dropout
0.5, then the pretext logits.

Backbone strides follow the 2019 code for patch methods: `models.PATCH_STRIDES` (ResNet and
RevNet; VGG has no strides to set), as patches are small.
"""

from typing import Dict, Tuple

import keras
import numpy as np
import tensorflow as tf

from core.errors import ConfigError
from datasets.preprocess import patch_geometry
from methods import base
import models
from models import common

HEAD_UNITS = 4096
HEAD_DROPOUT = 0.5


def head_units(architecture: str, filters_factor) -> int:
  """Units of the head's hidden layer: 4096 at standard width and wider, and proportionally
  fewer below it (4096 * filters_factor / standard filters_factor, e.g. 1024 for ResNet-50 at
  filters_factor 1), so that narrow test-size backbones do not carry a huge head."""
  standard = models.default_filters_factor(architecture)
  factor = standard if filters_factor is None else filters_factor
  return max(1, HEAD_UNITS * min(factor, standard) // standard)


class PatchHead(keras.layers.Layer):
  """fc (`units`) - batch norm - ReLU - dropout - logits (`num_classes`)."""

  def __init__(self, units: int, num_classes: int, bn_momentum: float = 0.9,
               sync_bn: bool = False, dropout: float = HEAD_DROPOUT, name: str = "head"):
    super().__init__(name=name)
    self.fc = keras.layers.Dense(units, use_bias=False, name="fc")  # batch norm follows
    self.bn = common.batch_norm("bn", bn_momentum, sync_bn)
    self.dropout = keras.layers.Dropout(dropout, name="dropout")
    # Small initial weights: the head starts near uniform predictions (loss ~ log K).
    self.logits = keras.layers.Dense(
        num_classes, name="logits", kernel_initializer=keras.initializers.RandomNormal(stddev=0.01))

  def build(self, input_shape):
    common.build_sequence(input_shape, self.fc, self.bn, self.dropout, self.logits)

  def compute_output_shape(self, input_shape):
    return common.output_shape(input_shape, self.fc, self.logits)

  def call(self, x, training=None):
    x = keras.ops.relu(self.bn(self.fc(x), training=training))
    return self.logits(self.dropout(x, training=training))


class PatchModel(keras.Model):
  """A backbone on single patches plus a pretext head over groups of `group_size` embeddings.

  `model(patches)` ([N,h,w,C]) returns the backbone's end points (`logits` = the embedding);
  `model.head(x)` classifies concatenated embeddings [M, group_size * embed_dim].
  Each layer is an attribute of its own (tf.train.Checkpoint does not see Keras 3 layers kept
  in Python lists).
  """

  def __init__(self, backbone: keras.Model, head: PatchHead, group_size: int, embed_dim: int,
               name: str = "patch_model"):
    super().__init__(name=name)
    self.backbone = backbone
    self.head = head
    self.group_size = group_size
    self.embed_dim = embed_dim

  def build(self, input_shape):
    if not self.backbone.built:
      self.backbone.build(tuple(input_shape))
    if not self.head.built:
      self.head.build((None, self.group_size * self.embed_dim))

  def call(self, images, training=None):
    return self.backbone(images, training=training)


def check_patch_input(config, image_shape, task: str) -> None:
  """Per-example input must be the P = splits_per_side^2 patches [P,h,w,C] of `crop_patches`."""
  num = config.splits_per_side ** 2
  if len(image_shape) != 4 or image_shape[0] != num:
    raise ValueError(f"{task} expects per-example patches [{num},h,w,C] from 'crop_patches' "
                     f"(splits_per_side={config.splits_per_side}), got {list(image_shape)}")


def build_patch_model(config, image_shape, task: str, group_size: int,
                      num_classes: int) -> PatchModel:
  """The backbone (patch strides, `embed_dim` logits) and a head for `num_classes`, built."""
  check_patch_input(config, image_shape, task)
  kwargs = base.backbone_kwargs(config)
  backbone = models.get_model(config.architecture, num_classes=config.embed_dim,
                              **models.PATCH_STRIDES, **kwargs)
  head = PatchHead(head_units(config.architecture, config.filters_factor), num_classes,
                   sync_bn=kwargs["sync_bn"])
  model = PatchModel(backbone, head, group_size, config.embed_dim, name=f"{task}_model")
  model(tf.zeros([1, *image_shape[1:]]), training=False)
  return model


def embed_patches(model: PatchModel, patches: tf.Tensor,
                  training: bool) -> Tuple[Dict[str, tf.Tensor], tf.Tensor]:
  """Patches [B,P,h,w,C] -> (backbone end points of the B*P patches, embeddings [B,P,D])."""
  num = patches.shape[1]
  end_points = model(base.flatten_stacked(patches), training=training)
  embeddings = tf.reshape(end_points["logits"], [-1, num, model.embed_dim])
  return end_points, embeddings


def permute_patches(x: tf.Tensor, perms) -> tf.Tensor:
  """x [B,P,...] and perms [K,P] -> [B,K,P,...] with out[b,k,i] = x[b, perms[k,i]].

  Position i of the k-th shuffled sequence holds the patch (or embedding) perms[k,i]; the
  backbone sees each patch alone, so shuffling embeddings equals shuffling the patches.
  """
  return tf.gather(x, perms, axis=1)


def inverse_permutations(perms) -> np.ndarray:
  """inv [K,P] with inv[k, perms[k,i]] = i: permute_patches by perms[k], then by inv[k], is x."""
  return np.argsort(np.asarray(perms), axis=-1)


def validate_patch_config(config) -> None:
  """The spec crops patches, and the crop leaves patches of at least one pixel."""
  base.require_op(config, "crop_patches", "resize,to_gray,crop,crop_patches,standardization")
  if config.crop_size is not None:
    try:
      patch_geometry(config.crop_size[0], config.crop_size[1], config.splits_per_side,
                     config.patch_jitter)
    except ValueError as e:
      raise ConfigError(f"--crop_size={list(config.crop_size)}: {e}") from None
