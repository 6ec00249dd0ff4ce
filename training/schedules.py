"""The optimization of every training in the suite, pretext training and evaluation heads
alike: the original code's learning-rate schedule (linear warm-up, then piecewise-constant
decay, the rate scaled with the batch size) or a cosine decay, the optimizers (SGD with
momentum, Adam, LARS), and the L2 weight decay."""

import math
from typing import Iterable, Optional, Sequence

import keras
import tensorflow as tf

from core import options

MOMENTUM = 0.9  # SGD's and LARS's.
LARS_ETA = 0.001  # LARS's trust coefficient (SimCLR's).


def scaled_lr(lr: float, batch_size: int, lr_scale_batch_size: int) -> float:
  """The base rate scaled linearly with the batch size (`--lr` is given for `lr_scale_batch_size`)."""
  if lr_scale_batch_size <= 0:
    raise ValueError(f"lr_scale_batch_size must be positive, got {lr_scale_batch_size}")
  return lr * batch_size / lr_scale_batch_size


class WarmupPiecewiseDecay(keras.optimizers.schedules.LearningRateSchedule):
  """`base_lr` reached linearly over `warmup_epochs`, then multiplied by `decay_factor` at each
  of `decay_epochs`, or, with `cosine_epochs`, decayed along a half cosine from the end of the
  warm-up to 0 at `cosine_epochs` (and 0 after it)."""

  def __init__(self, base_lr: float, steps_per_epoch: float, warmup_epochs: float = 0.0,
               decay_epochs: Sequence[float] = (), decay_factor: float = 0.1,
               cosine_epochs: Optional[float] = None):
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
    if cosine_epochs is not None and cosine_epochs <= warmup_epochs and cosine_epochs > 0:
      raise ValueError(f"cosine_epochs ({cosine_epochs}) must be after the warm-up "
                       f"({warmup_epochs} epochs)")
    self.cosine_epochs = None if cosine_epochs is None else float(cosine_epochs)

  def __call__(self, step):
    epoch = tf.cast(step, tf.float32) / self.steps_per_epoch
    lr = tf.constant(self.base_lr, tf.float32)
    if self.cosine_epochs is not None:
      done = tf.clip_by_value((epoch - self.warmup_epochs) /
                              (self.cosine_epochs - self.warmup_epochs), 0.0, 1.0)
      lr = lr * 0.5 * (1.0 + tf.cos(math.pi * done))
    for boundary in self.decay_epochs:
      lr = tf.where(epoch >= boundary, lr * self.decay_factor, lr)
    if self.warmup_epochs > 0:
      lr = lr * tf.minimum(1.0, epoch / self.warmup_epochs)
    return lr

  def get_config(self):
    return dict(base_lr=self.base_lr, steps_per_epoch=self.steps_per_epoch,
                warmup_epochs=self.warmup_epochs, decay_epochs=self.decay_epochs,
                decay_factor=self.decay_factor, cosine_epochs=self.cosine_epochs)


def is_kernel(variable) -> bool:
  """Whether a variable is a conv or dense kernel (not a bias or batch norm): a Keras variable
  named `kernel`, or the TensorFlow variable under it (`.../kernel:0`), as optimizers see it."""
  return variable.name.split(":")[0].rsplit("/", 1)[-1] == "kernel"


class LARS(keras.optimizers.Optimizer):
  """SGD with momentum whose rate is scaled per kernel by the trust ratio
  `eta * ||w|| / ||g||` (You et al. 2017, as SimCLR uses it): velocity = momentum * velocity +
  rate * ratio * g, w -= velocity. Variables that are not kernels (batch norm, biases) keep the
  plain rate, and a zero norm gives ratio 1. Weight decay is in the loss (`l2_decay`), so g
  holds it, as in the 2019 code's optimisation."""

  def __init__(self, learning_rate, momentum: float = MOMENTUM, eta: float = LARS_ETA,
               name: str = "lars", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum = float(momentum)
    self.eta = float(eta)

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.velocities = self.add_optimizer_variables(variables, "velocity")

  def update_step(self, gradient, variable, learning_rate):
    learning_rate = tf.cast(learning_rate, variable.dtype)
    gradient = tf.cast(gradient, variable.dtype)
    if is_kernel(variable):
      w_norm, g_norm = tf.norm(variable), tf.norm(gradient)
      ratio = tf.where(tf.logical_and(w_norm > 0, g_norm > 0),
                       self.eta * w_norm / tf.maximum(g_norm, 1e-30), 1.0)
      learning_rate = learning_rate * tf.cast(ratio, variable.dtype)
    velocity = self.velocities[self._get_variable_index(variable)]
    self.assign(velocity, self.momentum * velocity + learning_rate * gradient)
    self.assign_sub(variable, velocity)

  def get_config(self):
    return dict(super().get_config(), momentum=self.momentum, eta=self.eta)


def make_optimizer(name: str, lr: float, batch_size: int, lr_scale_batch_size: int,
                   steps_per_epoch: float, warmup_epochs: float = 0.0,
                   decay_epochs: Sequence[float] = (), lr_decay_factor: float = 0.1,
                   lr_schedule: str = "step", epochs: Optional[float] = None
                   ) -> keras.optimizers.Optimizer:
  """`name` (sgd: momentum 0.9; adam; lars) on the schedule above, `lr` given for a batch of
  `lr_scale_batch_size`; `lr_schedule` step (`decay_epochs`) or cosine (to 0 at `epochs`)."""
  if lr_schedule not in options.LR_SCHEDULES:
    raise ValueError(f"unknown lr_schedule {lr_schedule!r}; valid choices: "
                     f"{', '.join(options.LR_SCHEDULES)}")
  if lr_schedule == "cosine" and epochs is None:
    raise ValueError("lr_schedule 'cosine' needs the epochs it ends at")
  schedule = WarmupPiecewiseDecay(scaled_lr(lr, batch_size, lr_scale_batch_size),
                                  steps_per_epoch, warmup_epochs, decay_epochs, lr_decay_factor,
                                  cosine_epochs=epochs if lr_schedule == "cosine" else None)
  if name == "sgd":
    return keras.optimizers.SGD(learning_rate=schedule, momentum=MOMENTUM)
  if name == "adam":
    return keras.optimizers.Adam(learning_rate=schedule)
  if name == "lars":
    return LARS(learning_rate=schedule)
  raise ValueError(f"unknown optimizer {name!r}; valid choices: {', '.join(options.OPTIMIZERS)}")


def l2_decay(variables: Iterable[tf.Variable], weight_decay: float) -> tf.Tensor:
  """`weight_decay * sum(w**2) / 2` (tf.nn.l2_loss, as the original code) over the kernels
  (conv and dense weights, not biases or batch norm) among `variables`."""
  kernels = [v for v in variables if is_kernel(v)]
  if not kernels or not weight_decay:
    return tf.constant(0.0)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])
