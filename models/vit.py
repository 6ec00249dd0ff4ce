"""Vision Transformer (Dosovitskiy et al. 2021), pre-norm, with a class token; the width factor
is the number of attention heads of 64 dimensions each: filters_factor 3, 6 and 12 are ViT-Ti,
ViT-S and ViT-B (widths 192, 384, 768; 12 blocks, MLP ratio 4, as published).

The image is cut into square patches of `patch_size` (a strided convolution; pixels beyond the
last whole patch are dropped), each embedded to the width; a learned class token is prepended and
position embeddings are added: learned (`position_embedding="learned"`, one per token of the grid
the model is built for, bicubically interpolated to another grid) or fixed 2-D sine-cosine
(`"sincos"`, as MAE, for any grid; the class token's is zero). Each block is
x + attention(LN(x)), then x + MLP(LN(x)) (GELU, exact), LayerNorm epsilon 1e-6.

End points: `block1` .. `block12`, each block's output tokens `[B, 1 + N, D]` (the class token
first, then the N patch tokens in row-major order), `final_norm` (the final LayerNorm's tokens),
and `pre_logits`, the final class token `[B, D]` (what the head reads: `logits`). How the probes
reduce tokens to features is the evaluation's `--token_pooling` (eval/pooling.py).
"""

from typing import Optional, Tuple

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from core import architectures
from models import common

END_POINTS = architectures.facts("vit").end_points
DEPTH = 12
HEAD_DIM = 64
MLP_RATIO = 4
LN_EPSILON = 1e-6
POSITION_EMBEDDINGS = architectures.POSITION_EMBEDDINGS
_INIT = keras.initializers.TruncatedNormal(stddev=0.02)


def _dense(units: int, name: str) -> keras.layers.Dense:
  return keras.layers.Dense(units, kernel_initializer="glorot_uniform", name=name)


class Attention(keras.layers.Layer):
  """Multi-head self-attention: one projection to queries, keys and values (with biases), the
  softmax of q.k / sqrt(head dim) per head, then an output projection."""

  def __init__(self, width: int, heads: int, name: Optional[str] = None):
    super().__init__(name=name)
    self.width, self.heads = width, heads
    self.qkv = _dense(3 * width, "qkv")
    self.proj = _dense(width, "proj")

  def build(self, input_shape):
    common.build_sequence(input_shape, self.qkv)
    common.build_sequence(tuple(input_shape[:-1]) + (self.width,), self.proj)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.width,)

  def attention(self, x):
    """(the attention weights [B, heads, T, T], the heads' outputs concatenated [B, T, D])."""
    tokens = tf.shape(x)[1]
    head_dim = self.width // self.heads
    qkv = tf.reshape(self.qkv(x), [-1, tokens, 3, self.heads, head_dim])
    q, k, v = tf.unstack(tf.transpose(qkv, [2, 0, 3, 1, 4]))  # Each [B, heads, T, head_dim].
    weights = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) * head_dim ** -0.5, axis=-1)
    out = tf.transpose(tf.matmul(weights, v), [0, 2, 1, 3])
    return weights, tf.reshape(out, [-1, tokens, self.width])

  def call(self, x):
    return self.proj(self.attention(x)[1])


class Block(keras.layers.Layer):
  """x + attention(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, width: int, heads: int, name: Optional[str] = None):
    super().__init__(name=name)
    self.norm1 = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="norm1")
    self.attn = Attention(width, heads, name="attn")
    self.norm2 = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="norm2")
    self.fc1 = _dense(MLP_RATIO * width, "fc1")
    self.fc2 = _dense(width, "fc2")

  def build(self, input_shape):
    common.build_sequence(input_shape, self.norm1, self.attn, self.norm2, self.fc1, self.fc2)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape)

  def call(self, x, training=None):
    del training  # No dropout, no batch statistics.
    x = x + self.attn(self.norm1(x))
    return x + self.fc2(ops.gelu(self.fc1(self.norm2(x)), approximate=False))


def sincos_position_embedding(height: int, width: int, dim: int) -> np.ndarray:
  """Fixed 2-D embeddings [height * width, dim] of a grid in row-major order: the first half of
  the dimensions encode the row, the second the column, each as sines then cosines of the
  position times 1 / 10000^(i / (dim / 4)), i < dim / 4 (MAE's)."""
  if dim % 4:
    raise ValueError(f"sine-cosine position embeddings need a width divisible by 4, got {dim}")
  omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
  rows, cols = np.meshgrid(np.arange(height, dtype=np.float64),
                           np.arange(width, dtype=np.float64), indexing="ij")

  def encode(positions):
    angles = positions.reshape(-1)[:, None] * omega[None, :]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  return np.concatenate([encode(rows), encode(cols)], axis=1).astype(np.float32)


class ViT(common.Backbone):
  """The Vision Transformer backbone returning {block1..12, final_norm, pre_logits[, logits]}."""

  def __init__(self, *, num_classes: Optional[int], heads: int, patch_size: int,
               position_embedding: str, name: str):
    super().__init__(num_classes, name)
    self.width, self.heads = HEAD_DIM * heads, heads
    self.patch_size, self.position_kind = patch_size, position_embedding
    self.patch_embed = keras.layers.Conv2D(
        self.width, patch_size, strides=patch_size, padding="valid",
        kernel_initializer="glorot_uniform", name="patch_embed")
    self._block_names = self._add_sequence(
        [Block(self.width, heads, name=f"block{i + 1}") for i in range(DEPTH)])
    self.final_norm = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="final_norm")
    self.grid: Optional[Tuple[int, int]] = None  # The patch grid it was built for.

  def _blocks(self):
    return [getattr(self, n) for n in self._block_names]

  def patch_grid(self, height: Optional[int], width: Optional[int]) -> Tuple[int, int]:
    """The grid of whole patches of an image of this size; ValueError below one patch."""
    sides = []
    for side in (height, width):
      if side is None:
        raise ValueError(f"{self.name} needs images of a known size")
      if side < self.patch_size:
        raise ValueError(f"{self.name}: images of {height}x{width} hold no patch of "
                         f"{self.patch_size}x{self.patch_size}")
      sides.append(side // self.patch_size)
    return sides[0], sides[1]

  def build(self, input_shape):
    if self.grid is not None:
      return
    self.grid = self.patch_grid(input_shape[1], input_shape[2])
    tokens = 1 + self.grid[0] * self.grid[1]
    self.cls_token = self.add_weight(shape=(1, 1, self.width), initializer=_INIT,
                                     name="cls_token")
    self.position = None
    if self.position_kind == "learned":
      self.position = self.add_weight(shape=(1, tokens, self.width), initializer=_INIT,
                                      name="position_embedding")
    common.build_sequence(input_shape, self.patch_embed)
    common.build_sequence((input_shape[0], tokens, self.width), *self._blocks(),
                          self.final_norm)
    self._build_head((input_shape[0], self.width))

  def position_embedding(self, grid: Tuple[int, int]) -> tf.Tensor:
    """[1, 1 + h * w, D] for a patch grid of (h, w)."""
    h, w = grid
    if self.position is None:
      patches = sincos_position_embedding(h, w, self.width)
      return tf.constant(np.concatenate([np.zeros([1, self.width], np.float32), patches])[None])
    if grid == self.grid:
      return self.position
    cls, patches = self.position[:, :1], self.position[:, 1:]
    patches = tf.reshape(patches, [1, self.grid[0], self.grid[1], self.width])
    patches = tf.image.resize(patches, [h, w], method="bicubic")
    return tf.concat([cls, tf.reshape(patches, [1, h * w, self.width])], axis=1)

  def embed_patches(self, images):
    """(the class token [B, 1, D], the patch tokens [B, N, D] in row-major order), each with its
    position embedding: the blocks' input, in pieces, so that a method can drop patch tokens
    before the blocks (MAE's encoder sees the visible ones only)."""
    x = self.patch_embed(images)
    grid = self.patch_grid(images.shape[1], images.shape[2])
    x = tf.reshape(x, [-1, grid[0] * grid[1], self.width])
    position = tf.cast(self.position_embedding(grid), x.dtype)
    cls = tf.tile(tf.cast(self.cls_token, x.dtype) + position[:, :1], [tf.shape(x)[0], 1, 1])
    return cls, x + position[:, 1:]

  def encode(self, tokens, training=None):
    """The end points of the blocks and the final norm on `tokens` [B, 1 + n, D] (the class
    token first): {block1..12, final_norm, pre_logits[, logits]}."""
    x = tokens
    end_points = {}
    for block in self._blocks():
      x = block(x, training=training)
      end_points[block.name] = x
    x = self.final_norm(x)
    end_points["final_norm"] = x
    end_points["pre_logits"] = x[:, 0]
    if self.logits_layer is not None:
      end_points["logits"] = self.logits_layer(x[:, 0])
    return end_points

  def call(self, images, training=None):
    cls, patches = self.embed_patches(images)
    return self.encode(tf.concat([cls, patches], axis=1), training=training)

def build(*, num_classes: Optional[int], filters_factor: int, mode: str, last_relu: bool,
          root_conv_stride: int, strides, bn_momentum: float, sync_bn: bool,
          zero_init_residual: bool, patch_size: int, position_embedding: str,
          name: Optional[str]) -> keras.Model:
  """Builds a ViT with `filters_factor` heads of 64 dimensions; the convolutional settings
  (`mode`, `last_relu`, `root_conv_stride`, `strides`, batch norm, `zero_init_residual`) do not
  apply and are ignored."""
  del mode, last_relu, root_conv_stride, strides, bn_momentum, sync_bn, zero_init_residual
  if position_embedding not in POSITION_EMBEDDINGS:
    raise ValueError(f"unknown position_embedding {position_embedding!r}; valid choices: "
                     f"{', '.join(POSITION_EMBEDDINGS)}")
  if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
    raise ValueError(f"patch_size must be a positive integer, got {patch_size!r}")
  return ViT(num_classes=num_classes, heads=filters_factor, patch_size=patch_size,
             position_embedding=position_embedding, name=name or "vit")
