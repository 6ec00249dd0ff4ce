"""The learning-rate schedule of the original code: linear warm-up, then piecewise-constant decay."""

from typing import Sequence

import keras
import tensorflow as tf


def scaled_lr(lr: float, batch_size: int, lr_scale_batch_size: int) -> float:
  """The base rate scaled linearly with the batch size (`--lr` is given for `lr_scale_batch_size`)."""
  if lr_scale_batch_size <= 0:
    raise ValueError(f"lr_scale_batch_size must be positive, got {lr_scale_batch_size}")
  return lr * batch_size / lr_scale_batch_size


class WarmupPiecewiseDecay(keras.optimizers.schedules.LearningRateSchedule):
  """`base_lr` reached linearly over `warmup_epochs`, multiplied by `decay_factor` at each of `decay_epochs`."""

  def __init__(self, base_lr: float, steps_per_epoch: float, warmup_epochs: float = 0.0,
               decay_epochs: Sequence[float] = (), decay_factor: float = 0.1):
    if steps_per_epoch <= 0:
      raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    decay_epochs = list(decay_epochs)
    if decay_epochs != sorted(decay_epochs):
      raise ValueError(f"decay_epochs must be increasing, got {decay_epochs}")
    self.base_lr = float(base_lr)
    self.steps_per_epoch = float(steps_per_epoch)
    self.warmup_epochs = float(warmup_epochs)
    self.decay_epochs = [float(e) for e in decay_epochs]
    self.decay_factor = float(decay_factor)

  def __call__(self, step):
    epoch = tf.cast(step, tf.float32) / self.steps_per_epoch
    lr = tf.constant(self.base_lr, tf.float32)
    for boundary in self.decay_epochs:
      lr = tf.where(epoch >= boundary, lr * self.decay_factor, lr)
    if self.warmup_epochs > 0:
      lr = lr * tf.minimum(1.0, epoch / self.warmup_epochs)
    return lr

  def get_config(self):
    return dict(base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch,
                warmup_epochs=self.warmup_epochs, decay_epochs=self.decay_epochs,
                decay_factor=self.decay_factor)
