"""What every method's model_fn returns, and helpers shared by the classification pretext tasks.

A method module exposes:
  PRETEXT_OPS: preprocessing ops that create the pretext labels (dropped for representation eval).
  validate(config): raises core.errors.ConfigError for settings the method cannot run with.
  build_model(config, image_shape, num_classes): the Keras model (backbone + head), built for
    per-example input of `image_shape` as the data pipeline yields it (e.g. [4,H,W,C] for rotation).
  model_fn(model, batch, mode, config) -> ModelSpec, mode one of MODES.
  serving_input_shape(image_shape): the [H,W,C] of one image as the backbone sees it.
"""

import dataclasses
from typing import Dict

import tensorflow as tf

TRAIN, EVAL, PREDICT = "train", "eval", "predict"
MODES = (TRAIN, EVAL, PREDICT)


@dataclasses.dataclass
class ModelSpec:
  """One batch through a method.

  loss: scalar training loss of the batch (before weight decay); None in PREDICT mode.
  metrics: per-example values, each [N]; the trainer averages them (over the log interval in
    training, over the whole split in evaluation). Includes the per-example loss where defined.
  predictions: model outputs for the batch (e.g. logits).
  end_points: the backbone's end points for the batch.
  """
  loss: tf.Tensor
  metrics: Dict[str, tf.Tensor]
  predictions: Dict[str, tf.Tensor]
  end_points: Dict[str, tf.Tensor]


def stacked_serving_input_shape(image_shape):
  """For inputs stacked per example ([P,H,W,C]: rotations, patches, copies): one of them."""
  return tuple(image_shape[1:])


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(MODES)}")


def classification_spec(logits: tf.Tensor, labels: tf.Tensor, mode: str,
                        end_points: Dict[str, tf.Tensor]) -> ModelSpec:
  """Cross-entropy loss, top-1 and top-5 accuracy for `logits` [N,K] and int `labels` [N]."""
  check_mode(mode)
  logits = tf.cast(logits, tf.float32)
  predictions = {"logits": logits, "classes": tf.argmax(logits, axis=-1, output_type=tf.int32)}
  if mode == PREDICT:
    return ModelSpec(loss=None, metrics={}, predictions=predictions, end_points=end_points)
  labels = tf.cast(labels, tf.int32)
  per_example_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  k = min(5, logits.shape[-1])
  metrics = {
      "loss": per_example_loss,
      "accuracy": tf.cast(tf.equal(predictions["classes"], labels), tf.float32),
      f"top{k}": tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32),
  }
  if k == 1 or k == logits.shape[-1]:
    del metrics[f"top{k}"]
  return ModelSpec(loss=tf.reduce_mean(per_example_loss), metrics=metrics,
                   predictions=predictions, end_points=end_points)


def backbone_kwargs(config) -> dict:
  """The backbone settings that come from the config."""
  return dict(filters_factor=config.filters_factor, mode=config.mode, last_relu=config.last_relu,
              zero_init_residual=config.zero_init_residual,
              sync_bn=config.strategy != "default")
