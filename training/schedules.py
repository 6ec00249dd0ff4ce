"""The optimization of every training in the suite, pretext training and evaluation heads
alike: the original code's learning-rate schedule (linear warm-up, then piecewise-constant
decay, the rate scaled with the batch size), its optimizers, and its L2 weight decay."""

from typing import Iterable, Sequence

import keras
import tensorflow as tf

from core import options

MOMENTUM = 0.9  # SGD's.


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


def make_optimizer(name: str, lr: float, batch_size: int, lr_scale_batch_size: int,
                   steps_per_epoch: float, warmup_epochs: float = 0.0,
                   decay_epochs: Sequence[float] = (), lr_decay_factor: float = 0.1
                   ) -> keras.optimizers.Optimizer:
  """`name` (sgd: momentum 0.9; adam) on the schedule above, `lr` given for a batch of
  `lr_scale_batch_size`."""
  schedule = WarmupPiecewiseDecay(scaled_lr(lr, batch_size, lr_scale_batch_size),
                                  steps_per_epoch, warmup_epochs, decay_epochs, lr_decay_factor)
  if name == "sgd":
    return keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM)
  if name == "adam":
    return keras.optimizers.Adam(learning_rate=schedule)
  raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(options.OPTIMIZERS)}")


def l2_decay(variables: Iterable[tf.Variable], weight_decay: float) -> tf.Tensor:
  """`weight_decay * sum(w**2) / 2` (tf.nn.l2_loss, as the original code) over the kernels
  (conv and dense weights, not biases or batch norm) among `variables`."""
  kernels = [v for v in variables if v.name == "kernel"]
  if not kernels or not weight_decay:
    return tf.constant(0.0)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])
