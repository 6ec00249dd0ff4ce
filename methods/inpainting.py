"""Inpainting, the context encoder (Pathak et al. 2016): fill a hidden region of an image from
what surrounds it.

The 'mask_region' op (datasets/dense_targets.py, after '-1_to_1') hides the central square of
--mask_area of each image (the paper's central region, a quarter), or random blocks
(--inpainting_mask=blocks, the paper's random blocks), setting its pixels to 0, the middle of
[-1, 1] (the paper fills with the mean pixel), and keeps the image and the mask. The backbone
and a dense decoder (methods/dense.py) predict the image's pixels at the input's size divided by
--dense_output_stride (1: every pixel); the loss is the mean squared error over the hidden
pixels only,

  L = sum_ij m_ij |y_ij - x_ij|^2 / (C sum_ij m_ij),

per image (m the mask, area-averaged where the output is smaller than the input; x the
image's pixels, y the prediction; C channels), the batch's the mean of its images'.

Not implemented: the paper's adversarial term (a discriminator trained against the decoder,
with its own optimiser). It makes the fills sharper, which the paper wanted for the pictures;
the suite measures the encoder's representation with probes, and its trainer has one model and
one optimiser. Nor the paper's 10x weight on a band of the region's border that the mask's
pixels overlap.

The export's representation is the backbone on whole images: the evaluation spec is the training
spec without 'mask_region' (core/specs.PRETEXT_OPS), and so is its random-init baseline's.

Metrics: `loss`, per image; `psnr`, the pretext metric, the peak signal-to-noise ratio of the
hidden region's fill in dB (values in [-1, 1], peak-to-peak 2: methods/base.psnr), per image.
"""

import tensorflow as tf

from core import specs
from core.errors import ConfigError
from datasets.dense_targets import MASK, TARGET
from methods import base
from methods import dense

PRETEXT_METRIC = "psnr"

serving_input_shape = base.single_serving_input_shape
check_input_shape = dense.check_input_shape


def inpainting_loss(prediction: tf.Tensor, target: tf.Tensor, mask: tf.Tensor):
  """(per-image loss [B], per-image PSNR [B]) of `prediction` [B,h,w,C] of the pixels `target`
  [B,h,w,C] in the region `mask` [B,h,w,1] (module docstring)."""
  prediction, target = tf.cast(prediction, tf.float32), tf.cast(target, tf.float32)
  mask = tf.cast(mask, tf.float32)
  squared = tf.reduce_mean(tf.square(prediction - target), axis=-1, keepdims=True)
  loss = tf.reduce_sum(squared * mask, axis=[1, 2, 3]) / tf.maximum(
      tf.reduce_sum(mask, axis=[1, 2, 3]), 1e-12)
  return loss, base.psnr(loss)


def validate(config) -> None:
  base.require_op(config, "mask_region", "resize,flip_lr,-1_to_1,mask_region")
  names = specs.parse_spec(config.preprocessing)
  scaled = [i for i, n in enumerate(names) if n in specs.MINUS_ONE_TO_ONE_OPS]
  if not scaled or scaled[0] > names.index("mask_region"):
    raise ConfigError(f"--preprocessing={config.preprocessing!r}: 'mask_region' fills the "
                      f"region with 0, the middle of [-1, 1], and the PSNR is of values in "
                      f"[-1, 1]: put one of {', '.join(specs.MINUS_ONE_TO_ONE_OPS)} before it "
                      f"(e.g. 'resize,flip_lr,-1_to_1,mask_region')")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  return dense.build_dense_model(config, image_shape, image_shape[-1])


def model_fn(model, batch, mode, config):
  del config
  base.check_mode(mode)
  end_points = model(batch["image"], training=mode == base.TRAIN)
  prediction = tf.cast(end_points["logits"], tf.float32)
  predictions = {"reconstruction": prediction}
  if mode == base.PREDICT:
    return base.predict_spec(predictions, end_points)
  size = prediction.shape[1:3]
  loss, psnr = inpainting_loss(prediction, dense.resize_target(batch[TARGET], size),
                               dense.resize_target(batch[MASK], size))
  return base.ModelSpec(loss=tf.reduce_mean(loss), metrics={"loss": loss, "psnr": psnr},
                        predictions=predictions, end_points=end_points)
