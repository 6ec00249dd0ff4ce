"""MAE (He et al. 2022), masked autoencoders: a ViT encoder sees a random quarter of an image's
patches and a light decoder reconstructs the rest.

Each training image (a single image [H,W,C], values in [-1, 1]) is cut into the ViT's N patches
(row-major). Per image, a random --mask_ratio of them (75%) is masked: the patches are ranked by
uniform noise and the first n_keep = floor(N (1 - ratio)) are kept (`random_masking`, MAE's
reference code), so every image keeps exactly n_keep. The encoder (the backbone: models/vit.py)
runs on the class token and the kept patch tokens only, with their own position embeddings,
through all of its blocks and its final norm. The decoder (`Decoder`) maps those tokens to
--decoder_width, puts a shared, learned mask token in the place of every masked patch, so that
its tokens are in the image's order again (`restore_order`), adds fixed 2-D sine-cosine position
embeddings, and runs --decoder_depth pre-norm blocks of --decoder_heads heads, a LayerNorm and a
linear layer to each patch's p x p x C pixels. The loss is the mean squared error over the masked
patches only,

  L = 1 / |M| sum_{i in M} 1 / P sum_j (y_ij - t_ij)^2,

t the patch's pixels (row, column, channel order), with --norm_pix_loss normalised per patch:
(x - mean) / sqrt(var + 1e-6), var with Bessel's correction as in the reference code. Each image
has the same |M|, so the batch's loss is the mean of its images'.

The export's representation is the encoder without masking (the backbone's end points on all
patches, which the probes see); its serving `logits` are the decoder's reconstruction [B, N, P]
of every patch from the unmasked encoder, not probed.

Metrics: `loss`, per image, and `psnr`, the pretext metric: the peak signal-to-noise ratio of the
masked patches' reconstruction in the image's values (the prediction de-normalised with each
patch's own mean and deviation under --norm_pix_loss), for a peak-to-peak of 2 (values in
[-1, 1]: the '-1_to_1' op or 'inception_preprocess'), 10 log10(4 / MSE), per image.

Not implemented: the paper's AdamW (the suite's Adam with L2 decay instead) and its
exclusion of norms and biases from weight decay.
"""

from typing import Optional

import keras
import tensorflow as tf

from core import specs
from core.errors import ConfigError
from methods import base
import models
from models import common
from models import vit

PRETEXT_METRIC = "psnr"
NORM_EPSILON = 1e-6


def kept_patches(patches: int, ratio: float) -> int:
  """How many of `patches` stay visible at a mask ratio: floor(patches (1 - ratio))."""
  return int(patches * (1.0 - ratio))


def random_masking(batch: tf.Tensor, patches: int, keep: int):
  """(the indices [B, keep] of each image's kept patches, the ranks [B, N] that put the kept
  patches followed by the masked ones back in the image's order, the mask [B, N]: 1.0 where
  masked) of `batch` images of `patches` patches, `keep` of them kept at random."""
  noise = tf.random.uniform([batch, patches])
  shuffle = tf.argsort(noise, axis=1)
  restore = tf.argsort(shuffle, axis=1)
  masked_in_shuffle = tf.concat([tf.zeros([batch, keep]), tf.ones([batch, patches - keep])], 1)
  return shuffle[:, :keep], restore, tf.gather(masked_in_shuffle, restore, batch_dims=1)


def restore_order(kept: tf.Tensor, fill: tf.Tensor, restore: tf.Tensor) -> tf.Tensor:
  """Tokens [B, N, D] in the image's order from the kept patches' tokens `kept` [B, keep, D] (in
  the order random_masking kept them) and `fill` [D] for every masked one."""
  batch, patches = tf.shape(restore)[0], tf.shape(restore)[1]
  filler = tf.tile(tf.cast(fill, kept.dtype)[None, None],
                   tf.stack([batch, patches - tf.shape(kept)[1], 1]))
  return tf.gather(tf.concat([kept, filler], axis=1), restore, batch_dims=1)


def patchify(images: tf.Tensor, patch_size: int) -> tf.Tensor:
  """[B, N, p * p * C]: each whole p x p patch of `images` [B, H, W, C] in row-major order, its
  pixels in (row, column, channel) order (the pixels beyond the last whole patch dropped, as
  the ViT drops them)."""
  h, w, c = (images.shape[1] // patch_size, images.shape[2] // patch_size, images.shape[3])
  x = images[:, :h * patch_size, :w * patch_size]
  x = tf.reshape(x, [-1, h, patch_size, w, patch_size, c])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
  return tf.reshape(x, [-1, h * w, patch_size * patch_size * c])


def patch_statistics(target: tf.Tensor):
  """(mean, standard deviation sqrt(var + 1e-6)) of each patch's pixels [B, N, 1], the variance
  with Bessel's correction (the reference code's torch.var)."""
  pixels = tf.cast(tf.shape(target)[-1], target.dtype)
  mean = tf.reduce_mean(target, axis=-1, keepdims=True)
  var = tf.reduce_sum(tf.square(target - mean), axis=-1, keepdims=True) / (pixels - 1.0)
  return mean, tf.sqrt(var + NORM_EPSILON)


def mae_loss(prediction: tf.Tensor, pixels: tf.Tensor, mask: tf.Tensor, norm_pix_loss: bool):
  """(per-image loss [B], per-image PSNR of the masked patches [B]) of the decoder's
  `prediction` [B, N, P] of the patches `pixels` [B, N, P] with `mask` [B, N] (module
  docstring)."""
  prediction, pixels = tf.cast(prediction, tf.float32), tf.cast(pixels, tf.float32)
  mask = tf.cast(mask, tf.float32)
  target, in_pixels = pixels, prediction
  if norm_pix_loss:
    mean, std = patch_statistics(pixels)
    target = (pixels - mean) / std
    in_pixels = prediction * std + mean
  masked = tf.reduce_sum(mask, axis=1)
  loss = tf.reduce_sum(tf.reduce_mean(tf.square(prediction - target), -1) * mask, 1) / masked
  mse = tf.reduce_sum(tf.reduce_mean(tf.square(in_pixels - pixels), -1) * mask, 1) / masked
  return loss, base.psnr(mse)


class Decoder(keras.layers.Layer):
  """MAE's decoder: a linear map of the encoder's tokens to `width`, the learned mask token in
  the masked patches' places, fixed sine-cosine position embeddings, `depth` ViT blocks of
  `heads` heads, a LayerNorm and a linear layer to `patch_pixels` per patch token."""

  def __init__(self, width: int, depth: int, heads: int, patch_pixels: int,
               name: str = "decoder"):
    super().__init__(name=name)
    self.width, self.depth, self.patch_pixels = width, depth, patch_pixels
    self.embed = keras.layers.Dense(width, kernel_initializer="glorot_uniform", name="embed")
    for i in range(1, depth + 1):
      setattr(self, f"block{i}", vit.Block(width, heads, name=f"block{i}"))
    self.norm = keras.layers.LayerNormalization(epsilon=vit.LN_EPSILON, name="norm")
    self.prediction = keras.layers.Dense(patch_pixels, kernel_initializer="glorot_uniform",
                                         name="prediction")

  def _blocks(self):
    return [getattr(self, f"block{i}") for i in range(1, self.depth + 1)]

  def build(self, input_shape):
    self.mask_token = self.add_weight(shape=(self.width,), name="mask_token",
                                      initializer=keras.initializers.RandomNormal(stddev=0.02))
    common.build_sequence(input_shape, self.embed)
    common.build_sequence(tuple(input_shape[:-1]) + (self.width,), *self._blocks(), self.norm,
                          self.prediction)

  def call(self, encoded, grid, restore: Optional[tf.Tensor] = None, training=None):
    """[B, N, patch_pixels] from `encoded` [B, 1 + keep, D], the encoder's tokens (class token
    first) of the kept patches of a patch `grid` (h, w), `restore` random_masking's ranks (None:
    every patch was kept, in order)."""
    x = self.embed(encoded)
    patches = x[:, 1:]
    if restore is not None:
      patches = restore_order(patches, self.mask_token, restore)
    position = vit.sincos_position_embedding(grid[0], grid[1], self.width)
    x = tf.concat([x[:, :1], patches + tf.cast(position, x.dtype)[None]], axis=1)
    for block in self._blocks():
      x = block(x, training=training)
    return self.prediction(self.norm(x))[:, 1:]


class MAEModel(keras.Model):
  """The encoder (`backbone`, a ViT) and MAE's `decoder`. `model(images)` is the encoder on every
  patch: the backbone's end points and `logits`, the decoder's reconstruction of every patch."""

  def __init__(self, backbone: vit.ViT, decoder: Decoder, name: str):
    super().__init__(name=name)
    self.backbone = backbone
    self.decoder = decoder

  def build(self, input_shape):
    del input_shape  # Built by build_model.

  @property
  def probed_end_points(self):
    """The end points an export's probes see: the encoder's, not the reconstruction."""
    return list(vit.END_POINTS)

  def call(self, images, training=None):
    end_points = dict(self.backbone(images, training=training))
    grid = self.backbone.patch_grid(images.shape[1], images.shape[2])
    end_points["logits"] = self.decoder(end_points["final_norm"], grid=grid, training=training)
    return end_points

  def masked(self, images, ratio: float, training=None):
    """(the encoder's end points on the kept patches, the reconstruction [B, N, P], the mask
    [B, N]) of `images` with a random `ratio` of each one's patches masked."""
    grid = self.backbone.patch_grid(images.shape[1], images.shape[2])
    patches = grid[0] * grid[1]
    cls, tokens = self.backbone.embed_patches(images)
    kept, restore, mask = random_masking(tf.shape(images)[0], patches,
                                         kept_patches(patches, ratio))
    visible = tf.gather(tokens, kept, batch_dims=1)
    end_points = self.backbone.encode(tf.concat([cls, visible], axis=1), training=training)
    prediction = self.decoder(end_points["final_norm"], grid=grid, restore=restore,
                              training=training)
    return end_points, prediction, mask


def validate(config) -> None:
  if config.architecture != "vit":
    raise ConfigError(f"--task=mae masks a Vision Transformer's patch tokens: --architecture="
                      f"{config.architecture} is not one; valid choices: vit")
  if not set(specs.parse_spec(config.preprocessing)) & set(specs.MINUS_ONE_TO_ONE_OPS):
    raise ConfigError(f"--task=mae measures its reconstruction (PSNR) on values in [-1, 1]: "
                      f"--preprocessing={config.preprocessing!r} has none of "
                      f"{', '.join(specs.MINUS_ONE_TO_ONE_OPS)} (e.g. 'resize,flip_lr,-1_to_1')")
  if config.decoder_width % 4:
    raise ConfigError(f"--decoder_width={config.decoder_width}: the decoder's sine-cosine "
                      f"position embeddings need a multiple of 4")
  if config.decoder_width % config.decoder_heads:
    raise ConfigError(f"--decoder_width={config.decoder_width} does not split into "
                      f"--decoder_heads={config.decoder_heads} heads of equal width")


def build_model(config, image_shape, num_classes):
  del num_classes  # No labels.
  base.require_single_images(image_shape, config.task)
  backbone = models.get_model(config.architecture, num_classes=None,
                              **base.backbone_kwargs(config))
  grid = backbone.patch_grid(image_shape[0], image_shape[1])
  patches = grid[0] * grid[1]
  keep = kept_patches(patches, config.mask_ratio)
  if keep < 1 or keep == patches:
    raise ConfigError(f"--mask_ratio={config.mask_ratio} of the {patches} patches of "
                      f"{image_shape[0]}x{image_shape[1]} images (--vit_patch_size="
                      f"{config.vit_patch_size}) keeps {keep}: at least one patch must be "
                      f"masked and one kept")
  decoder = Decoder(config.decoder_width, config.decoder_depth, config.decoder_heads,
                    backbone.patch_size ** 2 * image_shape[-1])
  model = MAEModel(backbone, decoder, name=config.task)
  model(tf.zeros([1, *image_shape]), training=False)
  return model


serving_input_shape = base.single_serving_input_shape


def model_fn(model, batch, mode, config):
  base.check_mode(mode)
  images = batch["image"]
  if mode == base.PREDICT:
    end_points = model(images, training=False)
    return base.predict_spec({"reconstruction": end_points["logits"]}, end_points)
  end_points, prediction, mask = model.masked(images, config.mask_ratio,
                                              training=mode == base.TRAIN)
  loss, psnr = mae_loss(prediction, patchify(images, model.backbone.patch_size), mask,
                        config.norm_pix_loss)
  return base.ModelSpec(loss=tf.reduce_mean(loss), metrics={"loss": loss, "psnr": psnr},
                        predictions={"reconstruction": prediction, "mask": mask},
                        end_points=end_points)
