"""Per-layer probes: one linear or MLP head per layer, all trained together in one step.

The total loss is the sum over layers of each head's mean cross-entropy plus its weight decay;
heads share no variables, so each head gets exactly the gradient of its own loss.

Feature standardisation (on by default, `standardize=True` in linear_eval): each feature is
shifted and scaled by its mean and standard deviation on the training features the heads see,
and the same transform is applied at test time. Pooled features of different layers (and
architectures) differ in scale by orders of magnitude; standardising makes one learning rate work
for every layer, speeds up SGD, and leaves the set of linear classifiers unchanged (it is an affine
map of the input). Weight decay then acts on the weights of standardised features. Features that
are constant on the training set are zeroed (they carry no information there).
"""

import dataclasses
import math
import time
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from core.registry import Registry
import datasets
from training import schedules

EVAL_MODELS = Registry("eval_model")
MLP_DROPOUT = 0.5


@EVAL_MODELS.register("linear")
def linear_head(dim: int, num_classes: int, channels_hidden: int, seed: int) -> keras.Model:
  """A linear classifier (logistic regression)."""
  del channels_hidden
  return keras.Sequential([
      keras.Input((dim,)),
      keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.GlorotUniform(seed)),
  ])


@EVAL_MODELS.register("mlp")
def mlp_head(dim: int, num_classes: int, channels_hidden: int, seed: int) -> keras.Model:
  """One hidden ReLU layer of `channels_hidden` units, dropout 0.5, then a linear classifier."""
  return keras.Sequential([
      keras.Input((dim,)),
      keras.layers.Dense(channels_hidden, activation="relu",
                         kernel_initializer=keras.initializers.GlorotUniform(seed)),
      keras.layers.Dropout(MLP_DROPOUT, seed=seed),
      keras.layers.Dense(num_classes,
                         kernel_initializer=keras.initializers.GlorotUniform(seed + 7919)),
  ])


@dataclasses.dataclass
class FeatureStats:
  """Per-feature shift and scale: standardised = (x - mean) * inv_std."""
  mean: np.ndarray
  inv_std: np.ndarray


class StatsAccumulator:
  """Streaming per-feature mean and variance, chunks merged as in Chan et al. Per chunk, the sum
  and the sum of squares are accumulated in float64 straight from the features (no copy of a
  chunk, which for large tables costs more in fresh memory than the arithmetic), and its
  squared deviations are sum(x^2) - n * mean^2: in float64 that keeps about 16 - 2 * log10(|mean|
  / std) digits, all of float32's for any |mean| / std below 10^4."""

  def __init__(self):
    self._count: Dict[str, int] = {}
    self._mean: Dict[str, np.ndarray] = {}
    self._m2: Dict[str, np.ndarray] = {}

  def update(self, features: Mapping[str, np.ndarray]):
    for name, x in features.items():
      x = np.asarray(x)
      n_b, mean_b = x.shape[0], x.mean(axis=0, dtype=np.float64)
      squares = np.einsum("ij,ij->j", x, x, dtype=np.float64)
      m2_b = np.maximum(squares - n_b * mean_b ** 2, 0.0)
      if name not in self._count:
        self._count[name], self._mean[name], self._m2[name] = n_b, mean_b, m2_b
        continue
      n_a, mean_a = self._count[name], self._mean[name]
      n = n_a + n_b
      delta = mean_b - mean_a
      self._mean[name] = mean_a + delta * n_b / n
      self._m2[name] = self._m2[name] + m2_b + delta ** 2 * n_a * n_b / n
      self._count[name] = n

  def result(self) -> Dict[str, FeatureStats]:
    stats = {}
    for name, count in self._count.items():
      mean = self._mean[name]
      std = np.sqrt(self._m2[name] / count)
      constant = std <= 1e-6 * (1.0 + np.abs(mean))
      inv_std = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std))
      stats[name] = FeatureStats(mean.astype(np.float32), inv_std.astype(np.float32))
    return stats


def feature_stats(features: Mapping[str, np.ndarray], chunk: int = 8192) -> Dict[str, FeatureStats]:
  """Per-layer FeatureStats of in-memory features, in chunks to bound the float64 copies."""
  acc = StatsAccumulator()
  num = next(iter(features.values())).shape[0]
  for start in range(0, num, chunk):
    acc.update({name: array[start:start + chunk] for name, array in features.items()})
  return acc.result()


class Probes:
  """One head per layer; `stats` (optional) standardises each layer's features first."""

  def __init__(self, feature_dims: Mapping[str, int], num_classes: int,
               eval_model: str = "linear", channels_hidden: int = 1000,
               weight_decay: float = 0.0, seed: int = 0,
               stats: Optional[Mapping[str, FeatureStats]] = None):
    if num_classes < 2:
      raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    build = EVAL_MODELS.get(eval_model)
    self.layers = list(feature_dims)
    self.num_classes = num_classes
    self.weight_decay = float(weight_decay)
    self.heads = {name: build(int(dim), num_classes, channels_hidden, seed + 1000 * i)
                  for i, (name, dim) in enumerate(feature_dims.items())}
    self.stats = None if stats is None else {name: stats[name] for name in self.layers}

  @property
  def trainable_variables(self):
    return [v for name in self.layers for v in self.heads[name].trainable_variables]

  def standardize(self, name: str, x: tf.Tensor) -> tf.Tensor:
    """Layer `name`'s features as its head takes them: float32, standardised by `stats`."""
    x = tf.cast(x, tf.float32)
    if self.stats is None:
      return x
    return (x - self.stats[name].mean) * self.stats[name].inv_std

  def standardize_in_place(self, features: Mapping[str, np.ndarray]) -> None:
    """`standardize` of each layer's NumPy array, written into the array (a large table is not
    copied; float16 stays float16)."""
    if self.stats is None:
      return
    for name in self.layers:
      np.subtract(features[name], self.stats[name].mean, out=features[name], casting="unsafe")
      np.multiply(features[name], self.stats[name].inv_std, out=features[name], casting="unsafe")

  def logits(self, features: Mapping[str, tf.Tensor], training: bool,
             standardized: bool = False) -> Dict[str, tf.Tensor]:
    """Each head's logits; `standardized`: `features` went through `standardize` already."""
    return {name: self.heads[name](
        tf.cast(features[name], tf.float32) if standardized else
        self.standardize(name, features[name]), training=training) for name in self.layers}

  def losses(self, features, labels, training: bool,
             standardized: bool = False) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """(total loss to minimise, {layer: mean cross-entropy})."""
    logits = self.logits(features, training, standardized)
    cross_entropy = {
        name: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits[name]))
        for name in self.layers}
    total = tf.add_n(list(cross_entropy.values()))
    total += schedules.l2_decay(self.trainable_variables, self.weight_decay)
    return total, cross_entropy


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps per epoch: full batches only (one smaller batch when N < batch_size)."""
  return max(1, num_examples // batch_size)


# Steps per call of the compiled training loop over cached features: a step of linear heads on
# cached features is a few small matrix products (milliseconds), to which a Python call per step
# would add its own overhead.
ARRAY_STEPS_PER_CALL = 64


def train_probes_on_arrays(probes: Probes, optimizer: keras.optimizers.Optimizer,
                           features: Mapping[str, np.ndarray], labels: np.ndarray,
                           batch_size: int, seed: int, num_steps: int) -> Dict[str, float]:
  """`train_probes` over in-memory features (the cached protocol). **`features` are
  standardised in place** (`Probes.standardize_in_place`): read anything else from them first.

  The standardised features are copied once into tensors and each step gathers its batch inside
  the compiled step, so a step costs the heads' arithmetic, not a host copy of [batch, sum of
  dims] floats nor their standardisation; `ARRAY_STEPS_PER_CALL` steps run in one call. Batches
  follow `epoch_orders` (a fresh seeded permutation per epoch, the last partial batch dropped).
  """
  probes.standardize_in_place(features)
  table = {name: tf.convert_to_tensor(array) for name, array in features.items()}
  batches = ((idx, labels[idx]) for order in epoch_orders(len(labels), batch_size, seed)
             for idx in order)
  return train_probes(probes, optimizer, batches, num_steps,
                      feature_fn=lambda idx: {name: tf.gather(t, idx) for name, t in table.items()},
                      steps_per_call=ARRAY_STEPS_PER_CALL, standardized=True)


def epoch_orders(num_examples: int, batch_size: int, seed: int):
  """Endlessly, per epoch, the list of (sorted) index arrays of its training batches."""
  rng = np.random.default_rng(seed)
  steps = steps_per_epoch(num_examples, batch_size)
  while True:
    perm = rng.permutation(num_examples)
    yield [np.sort(perm[i * batch_size:(i + 1) * batch_size]) for i in range(steps)]


def num_train_steps(epochs: float, steps_in_epoch: int) -> int:
  """Total training steps for (possibly fractional) `epochs`."""
  return max(1, int(math.ceil(epochs * steps_in_epoch)))


def relaxed_signature(structure, leading: int):
  """TensorSpecs of the tensors in `structure` with their first `leading` dimensions unknown, for
  a tf.function that must not trace again for another number of steps or another batch size (a
  trace of all heads' steps takes as long as hundreds of the steps)."""
  return list(tf.nest.map_structure(
      lambda t: tf.TensorSpec([None] * leading + t.shape.as_list()[leading:], t.dtype),
      structure))


def train_probes(probes: Probes, optimizer: keras.optimizers.Optimizer, batches: Iterable,
                 num_steps: int, feature_fn: Optional[Callable] = None,
                 log_every_s: float = 30.0, steps_per_call: int = 1,
                 standardized: bool = False) -> Dict[str, float]:
  """Trains all heads at once for `num_steps` steps over `batches` of (inputs, labels).

  Inputs are feature dicts, or whatever `feature_fn` turns into them inside the step: images
  through the frozen backbone (the on-the-fly protocol), or batch indices into cached features
  (`train_probes_on_arrays`). `steps_per_call` consecutive batches (all of the same shapes) are
  stacked and trained on in one call of the compiled loop, one step after the other.
  `standardized`: the features are standardised already (`Probes.standardize`). Returns the last
  step's loss per layer.
  """
  if steps_per_call < 1:
    raise ValueError(f"steps_per_call must be at least 1, got {steps_per_call}")
  variables = probes.trainable_variables
  optimizer.build(variables)

  def one_step(inputs, labels):
    features = feature_fn(inputs) if feature_fn is not None else inputs
    features = {name: tf.stop_gradient(features[name]) for name in probes.layers}
    with tf.GradientTape() as tape:
      total, cross_entropy = probes.losses(features, labels, training=True,
                                           standardized=standardized)
    grads = tape.gradient(total, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return cross_entropy

  def steps(stacked_inputs, stacked_labels):
    losses = {name: tf.zeros([]) for name in probes.layers}
    for i in tf.range(tf.shape(stacked_labels)[0]):
      inputs = tf.nest.map_structure(lambda t, i=i: t[i], stacked_inputs)
      losses = one_step(inputs, stacked_labels[i])
    return losses

  compiled = None
  start = last_log = time.time()
  done, losses = 0, {}
  iterator = iter(batches)
  while done < num_steps:
    chunk = []
    for _ in range(min(steps_per_call, num_steps - done)):
      try:
        chunk.append(next(iterator))
      except StopIteration:
        raise ValueError(f"the training batches ran out after {done + len(chunk)} of "
                         f"{num_steps} steps") from None
    inputs = tf.nest.map_structure(lambda *xs: tf.stack(xs), *[c[0] for c in chunk])
    labels = tf.stack([tf.cast(datasets.image_labels(c[1]), tf.int32) for c in chunk])
    if compiled is None:  # Traced once: the last, shorter chunk (or batch) reuses the trace.
      compiled = tf.function(steps, input_signature=relaxed_signature((inputs, labels), 2))
    losses = compiled(inputs, labels)
    done += len(chunk)
    now = time.time()
    if now - last_log >= log_every_s or done == num_steps:
      last_log = now
      rate = done / max(now - start, 1e-9)
      mean_loss = float(np.mean([float(v) for v in losses.values()]))
      logging.info("heads: step %d/%d, mean loss %.4f, %.1f steps/s, ETA %.0fs", done, num_steps,
                   mean_loss, rate, (num_steps - done) / rate)
  return {name: float(v) for name, v in losses.items()}


def evaluate_probes(probes: Probes, batches: Iterable,
                    feature_fn: Optional[Callable] = None) -> Dict[str, Dict[str, float]]:
  """Per layer: top1, top5 (top-k with k = min(5, num_classes)) and mean cross-entropy `loss`."""
  k = min(5, probes.num_classes)

  def step(inputs, labels):
    features = feature_fn(inputs) if feature_fn is not None else inputs
    logits = probes.logits(features, training=False)
    out = {}
    for name in probes.layers:
      top = tf.math.top_k(logits[name], k).indices
      hits = tf.cast(tf.equal(top, labels[:, None]), tf.float32)
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits[name])
      out[name] = tf.stack([tf.reduce_sum(hits[:, 0]), tf.reduce_sum(hits),
                            tf.reduce_sum(loss)])
    return out

  sums = {name: np.zeros(3, np.float64) for name in probes.layers}
  count, compiled = 0, None
  for inputs, labels in batches:
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    labels = tf.cast(datasets.image_labels(labels), tf.int32)
    if compiled is None:
      compiled = tf.function(step, input_signature=relaxed_signature((inputs, labels), 1))
    for name, value in compiled(inputs, labels).items():
      sums[name] += value.numpy()
    count += int(labels.shape[0])
  if not count:
    raise ValueError("no evaluation examples")
  return {name: dict(top1=float(s[0] / count), top5=float(s[1] / count), loss=float(s[2] / count))
          for name, s in sums.items()}


def array_eval_batches(features: Mapping[str, np.ndarray], labels: np.ndarray, batch_size: int):
  """In-order evaluation batches from in-memory arrays."""
  for start in range(0, len(labels), batch_size):
    yield ({name: array[start:start + batch_size] for name, array in features.items()},
           labels[start:start + batch_size])
