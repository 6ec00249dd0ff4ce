"""Exemplar (Dosovitskiy et al. 2014), as a metric-learning task: every image is its own class.

The `exemplar_copies` op makes `num_of_inception_patches` heavily augmented copies of each image
([B,N,H,W,C]). The backbone, whose logits layer has `embed_dim` units, embeds all B*N copies at
once; each embedding is L2-normalised (per row: the 2019 code normalised along the batch axis),
and the triplet semi-hard loss (methods/triplet_loss.py, `margin`) pulls the copies of an image
together, with labels = the index of the source image in the batch.

Metric `accuracy`: copy retrieval top-1, the share of copies whose nearest other copy (cosine
similarity) comes from the same image; chance is (N-1)/(B*N-1).
"""

import tensorflow as tf

from core.errors import ConfigError
from methods import base
from methods import triplet_loss
import models


def validate(config) -> None:
  base.require_op(config, "exemplar_copies", "resize,exemplar_copies,standardization")
  if config.num_of_inception_patches < 2:
    raise ConfigError(f"--num_of_inception_patches={config.num_of_inception_patches}: exemplar "
                      "needs at least 2 copies per image for a positive pair")
  base.require_two_images(config)


def build_model(config, image_shape, num_classes):
  del num_classes  # Every image is its own class.
  if len(image_shape) != 4:
    raise ValueError(f"exemplar expects per-example copies [N,H,W,C] from 'exemplar_copies', "
                     f"got {list(image_shape)}")
  model = models.get_model(config.architecture, num_classes=config.embed_dim,
                           **base.backbone_kwargs(config))
  model(tf.zeros([1, *image_shape[1:]]), training=False)
  return model


serving_input_shape = base.stacked_serving_input_shape


def retrieval_hits(labels: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
  """[N] 1.0 where the nearest other row of L2-normalised `embeddings` has the same label."""
  similarity = tf.matmul(embeddings, embeddings, transpose_b=True)
  similarity -= 3.0 * tf.eye(tf.shape(embeddings)[0])  # Never oneself (similarities >= -1).
  nearest = tf.argmax(similarity, axis=1, output_type=tf.int32)
  return tf.cast(tf.equal(tf.gather(labels, nearest), labels), tf.float32)


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  images = batch["image"]
  num_copies = images.shape[1]
  end_points, embeddings = base.embed_stacked(model, images, mode)
  predictions = {"embeddings": embeddings}
  if mode == base.PREDICT:
    return base.predict_spec(predictions, end_points)
  labels = tf.repeat(tf.range(tf.shape(images)[0]), num_copies)  # source image index
  pair_losses, positive = triplet_loss.triplet_semihard_pair_losses(labels, embeddings,
                                                                    config.margin)
  loss = tf.math.divide_no_nan(tf.reduce_sum(pair_losses),
                               tf.reduce_sum(tf.cast(positive, tf.float32)))
  metrics = {
      "loss": tf.boolean_mask(pair_losses, positive),  # per anchor-positive pair
      "accuracy": retrieval_hits(labels, embeddings),
  }
  return base.ModelSpec(loss=loss, metrics=metrics, predictions=predictions,
                        end_points=end_points)
