"""Per-layer probes: for every layer a bank of linear (or MLP) heads, one per setting of a small
grid (learning rate x weight decay), all trained together on the same batches, from a feature
store (eval/store.py) within a memory budget.

The total loss is the sum over layers and settings of each head's mean cross-entropy; heads share
no variables, so each gets exactly the gradient of its own loss. Each head's kernels are updated
by SGD with momentum 0.9 at its own learning rate (times the schedule's factor) and weight decay
(L2, `wd * sum(w**2) / 2`, on kernels: the gradient gains `wd * w`), as keras.optimizers.SGD
does for one head.

Each layer's features enter its heads transformed by their statistics on the training rows
(eval/feature_stats.py: standardised, and by default decorrelated); with decorrelation the first
kernel's step is scaled per axis by `(1 + wd) / (lam + wd + PRECONDITIONER_DAMPING)` (the inverse
curvature there, that module's docstring).
"""

import concurrent.futures
import dataclasses
import itertools
import math
import time
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from core.registry import Registry
from eval import feature_stats as stats_lib
from eval import store as store_lib
from training import schedules

EVAL_MODELS = Registry("eval_model")
MLP_DROPOUT = 0.5
MOMENTUM = schedules.MOMENTUM


@dataclasses.dataclass(frozen=True)
class Setting:
  """One head's optimisation: learning rate (for a batch of the evaluation's
  lr_scale_batch_size) and weight decay."""
  lr: float
  weight_decay: float

  def to_dict(self) -> Dict[str, float]:
    return dict(lr=self.lr, weight_decay=self.weight_decay)


def grid(lrs: Sequence[float], weight_decays: Sequence[float]) -> List[Setting]:
  """Every (learning rate, weight decay) pair, learning rates outermost, as given."""
  return [Setting(float(lr), float(wd)) for lr, wd in itertools.product(lrs, weight_decays)]


def _glorot(seed: int, fan_in: int, fan_out: int) -> tf.Tensor:
  """Glorot-uniform kernel `[fan_in, fan_out]`."""
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return tf.random.stateless_uniform([fan_in, fan_out], [seed, 0], -limit, limit)


def _bank_matmul(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
  """`x` `[B, D]` through every setting's kernel of `kernel` `[D, S, K]` in one matrix product:
  `[S, B, K]`."""
  dim, settings, width = kernel.shape
  out = tf.matmul(x, tf.reshape(kernel, [dim, settings * width]))
  return tf.transpose(tf.reshape(out, [-1, settings, width]), [1, 0, 2])


@EVAL_MODELS.register("linear")
def linear_head(dim: int, num_classes: int, channels_hidden: int, settings: int, seed: int):
  """A linear classifier (logistic regression), the same start for every setting: its
  variables' initial values, the axis of each that runs over the settings, how many of them
  (first) are kernels, and its logits `[S, B, C]` of standardised features `[B, D]`."""
  del channels_hidden
  kernel = tf.tile(_glorot(seed, dim, num_classes)[:, None, :], [1, settings, 1])
  init = [kernel, tf.zeros([settings, num_classes])]

  def logits(variables, x, training, seed_tensor):
    del training, seed_tensor
    kernel, bias = variables
    return _bank_matmul(x, kernel) + bias[:, None, :]
  return init, (1, 0), 1, logits


@EVAL_MODELS.register("mlp")
def mlp_head(dim: int, num_classes: int, channels_hidden: int, settings: int, seed: int):
  """One hidden ReLU layer of `channels_hidden` units, dropout 0.5, then a linear classifier."""
  k1 = tf.tile(_glorot(seed, dim, channels_hidden)[:, None, :], [1, settings, 1])
  k2 = tf.tile(_glorot(seed + 7919, channels_hidden, num_classes)[None], [settings, 1, 1])
  init = [k1, k2, tf.zeros([settings, channels_hidden]), tf.zeros([settings, num_classes])]

  def logits(variables, x, training, seed_tensor):
    k1, k2, b1, b2 = variables
    hidden = tf.nn.relu(_bank_matmul(x, k1) + b1[:, None, :])
    if training:
      hidden = tf.nn.experimental.stateless_dropout(hidden, MLP_DROPOUT, seed_tensor)
    return tf.einsum("sbh,shc->sbc", hidden, k2) + b2[:, None, :]
  return init, (1, 0, 0, 0), 2, logits


def head_params(eval_model: str, dim: int, num_classes: int, channels_hidden: int) -> int:
  """Parameters of one head (one setting)."""
  if eval_model == "mlp":
    return (dim + 1) * channels_hidden + (channels_hidden + 1) * num_classes
  return (dim + 1) * num_classes


# Added to every variance in the preconditioner: bounds the step along the least varying
# directions of heads without weight decay.
PRECONDITIONER_DAMPING = 1e-3


class Probes:
  """A bank of heads per layer: `settings[layer]` (a layer's grid, or the one setting chosen for
  it), trained together; `stats` (optional) transforms each layer's features first
  (standardised, and decorrelated with a basis; `transform`);
  `lr_factor(step)`: the schedule's factor of every learning rate (warm-up, decays)."""

  def __init__(self, feature_dims: Mapping[str, int], num_classes: int,
               settings: Mapping[str, Sequence[Setting]], eval_model: str = "linear",
               channels_hidden: int = 1000, seed: int = 0,
               stats: Optional[Mapping[str, stats_lib.FeatureStats]] = None,
               lr_factor: Callable[[tf.Tensor], tf.Tensor] = lambda step: 1.0,
               lr_scale: float = 1.0, layer_seeds: Optional[Mapping[str, int]] = None):
    if num_classes < 2:
      raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    build = EVAL_MODELS.get(eval_model)
    self.layers = list(feature_dims)
    self.num_classes = num_classes
    self.settings = {name: list(settings[name]) for name in self.layers}
    # Each layer's transform as TensorFlow values: a decorrelating basis is a (large) variable,
    # not a constant copied into every trace.
    self._transforms = {}
    for name in self.layers:
      s = None if stats is None else stats[name]
      if s is not None and s.basis is not None:
        s = dataclasses.replace(s, basis=tf.Variable(s.basis, trainable=False,
                                                     name=f"{name}_basis"))
      self._transforms[name] = s
    self.lr_factor = lr_factor
    # Each layer's seed is its place among all of the evaluation's layers, so that a layer's
    # heads start the same whichever group it trains in.
    self.layer_seeds = layer_seeds or {name: i for i, name in enumerate(self.layers)}
    layer_seeds = self.layer_seeds
    self.variables, self.slots, self._logits, self._kernels, self._axes = {}, {}, {}, {}, {}
    self.lrs, self.decays, self._preconditioners = {}, {}, {}
    for name, dim in feature_dims.items():
      stats_n = self._transforms[name]
      if stats_n is not None:
        dim = stats_n.input_dim(int(dim))
      init, axes, kernels, logits = build(int(dim), num_classes, channels_hidden,
                                          len(self.settings[name]),
                                          seed + 1000 * layer_seeds[name])
      self.variables[name] = [tf.Variable(v, name=f"{name}_{i}") for i, v in enumerate(init)]
      self.slots[name] = [tf.Variable(tf.zeros_like(v)) for v in init]
      self._logits[name], self._kernels[name], self._axes[name] = logits, kernels, axes
      self.lrs[name] = tf.constant([lr_scale * s.lr for s in self.settings[name]], tf.float32)
      self.decays[name] = tf.constant([s.weight_decay for s in self.settings[name]], tf.float32)
      self._preconditioners[name] = None
      if stats_n is not None and stats_n.eigenvalues is not None:
        # The first kernel's step per input axis and setting `[K, S, 1]` (module docstring).
        decay = np.array([s.weight_decay for s in self.settings[name]])
        scale = (1 + decay) / (stats_n.eigenvalues[:, None] + decay + PRECONDITIONER_DAMPING)
        self._preconditioners[name] = tf.constant(scale[:, :, None], tf.float32)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.seed = seed

  @property
  def trainable_variables(self):
    return [v for name in self.layers for v in self.variables[name]]

  def standardize(self, name: str, x: tf.Tensor) -> tf.Tensor:
    """Layer `name`'s features as its heads take them (`transform` by its stats)."""
    return stats_lib.transform(self._transforms[name], x)

  def logits(self, features: Mapping[str, tf.Tensor], training: bool) -> Dict[str, tf.Tensor]:
    """Each layer's logits `[S, B, C]`, a row per setting."""
    out = {}
    for name in self.layers:  # Dropout's seed: the step's and the layer's, whatever its group.
      seed = tf.stack([tf.cast(self.step, tf.int32),
                       tf.constant(self.seed * 7919 + self.layer_seeds[name])])
      out[name] = self._logits[name](self.variables[name], self.standardize(name, features[name]),
                                     training, seed)
    return out

  def losses(self, features, labels, training: bool) -> Tuple[tf.Tensor, Dict[str, tf.Tensor]]:
    """(total loss to minimise, {layer: each setting's mean cross-entropy `[S]`}); the weight
    decay is applied by `apply_gradients`."""
    logits = self.logits(features, training)
    cross_entropy = {}
    for name in self.layers:
      tiled = tf.broadcast_to(labels[None], tf.shape(logits[name])[:2])
      cross_entropy[name] = tf.reduce_mean(
          tf.nn.sparse_softmax_cross_entropy_with_logits(tiled, logits[name]), axis=1)
    return tf.add_n([tf.reduce_sum(v) for v in cross_entropy.values()]), cross_entropy

  def apply_gradients(self, grads: Sequence[tf.Tensor]) -> None:
    """One SGD-with-momentum step of every head at its own rate and weight decay."""
    factor = tf.cast(self.lr_factor(self.step), tf.float32)
    grads = iter(grads)
    for name in self.layers:
      for i, (var, slot) in enumerate(zip(self.variables[name], self.slots[name])):
        grad = next(grads)
        shape = [1] * len(var.shape)
        shape[self._axes[name][i]] = -1  # The settings' values along the settings' axis.
        if i < self._kernels[name]:
          grad += tf.reshape(self.decays[name], shape) * var
        if i == 0 and self._preconditioners[name] is not None:
          grad *= self._preconditioners[name]
        slot.assign(MOMENTUM * slot - tf.reshape(self.lrs[name] * factor, shape) * grad)
        var.assign_add(slot)
    self.step.assign_add(1)


def head_bytes(eval_model: str, dim: int, num_classes: int, channels_hidden: int,
               settings: int, batch_size: int) -> int:
  """Memory of one layer's bank of `settings` heads in training: each variable, its momentum and
  its gradient in float32, and the activations of a batch (logits, hidden units) 3 times."""
  params = head_params(eval_model, dim, num_classes, channels_hidden)
  width = num_classes + (channels_hidden if eval_model == "mlp" else 0)
  return 4 * settings * (3 * params + 3 * batch_size * width)


# Copies of a batch's features in flight while heads train from a store: the rows being trained
# on, those read ahead, TensorFlow's copy of them (in the store's dtype), and their standardised
# float32 batch.
BATCH_COPIES = 3


def batch_bytes(dim: int, itemsize: int, rows: int) -> int:
  return rows * dim * (BATCH_COPIES * itemsize + 4)


@dataclasses.dataclass
class Reading:
  """How heads train within a memory budget: which layers together, how many batches per read."""
  groups: List[List[str]]
  steps_per_call: int
  need_bytes: int  # The peak estimate of the largest group.


# At most this many training batches are read and trained on per call of the compiled loop: a
# step of linear heads is a few small matrix products (milliseconds), to which a Python call per
# step would add its own overhead. Large batches of wide layers take fewer: at most
# MAX_CHUNK_BYTES of their features in flight.
MAX_STEPS_PER_CALL = 64
MAX_CHUNK_BYTES = 1 << 30


def plan_reading(dims: Mapping[str, int], itemsize: int, num_classes: int, eval_model: str,
                 channels_hidden: int, settings: int, batch_size: int,
                 budget: Optional[int], decorrelate: bool = False) -> Reading:
  """Groups of layers (in depth order) whose heads, batches and decorrelation fit in `budget`
  bytes together, and the batches read per call; None: no limit (one group). A ValueError names
  the first layer that does not fit alone, its size and the budget."""
  def need(names, steps):
    return sum(head_bytes(eval_model, dims[n], num_classes, channels_hidden, settings,
                          batch_size) + batch_bytes(dims[n], itemsize, steps * batch_size)
               for n in names) + (stats_lib.decorrelation_bytes([dims[n] for n in names])
                                  if decorrelate else 0)

  def too_many(names, steps):
    return steps > 1 and sum(batch_bytes(dims[n], itemsize, steps * batch_size)
                             for n in names) > MAX_CHUNK_BYTES

  if budget is None:
    steps = MAX_STEPS_PER_CALL
    while too_many(dims, steps):
      steps //= 2
    return Reading([list(dims)], steps, need(dims, steps))
  groups, current = [], []
  for name in dims:
    if need([name], 1) > budget:
      heads = head_bytes(eval_model, dims[name], num_classes, channels_hidden, settings,
                         batch_size)
      extra = (f", {stats_lib.decorrelation_bytes([dims[name]]) / 2**30:.2f} GiB to decorrelate "
               "them" if decorrelate else "")
      raise ValueError(
          f"layer {name}: its {settings} {eval_model} head(s) on {dims[name]} features for "
          f"{num_classes} classes and a batch of {batch_size} need {need([name], 1) / 2**30:.2f} "
          f"GiB ({heads / 2**30:.2f} GiB of heads{extra}), over the probes' memory budget of "
          f"{budget / 2**30:.2f} GiB")
    if current and need(current + [name], 1) > budget:
      groups.append(current)
      current = []
    current.append(name)
  groups.append(current)
  steps = MAX_STEPS_PER_CALL
  while steps > 1 and any(need(g, steps) > budget or too_many(g, steps) for g in groups):
    steps //= 2
  return Reading(groups, steps, max(need(g, steps) for g in groups))


def minival_split(rows: np.ndarray, fraction: float, max_rows: int, seed: int
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """(rows to fit on, held-out rows): a seeded `fraction` of `rows` (at most `max_rows`, at
  least one) held out, both sorted."""
  rows = np.asarray(rows)
  held = min(max_rows, max(1, int(round(fraction * len(rows)))))
  if held >= len(rows):
    raise ValueError(f"{len(rows)} training examples are too few to hold {held} out to choose "
                     "the heads' settings on")
  perm = np.random.default_rng([seed, 17]).permutation(len(rows))
  return np.sort(rows[perm[held:]]), np.sort(rows[perm[:held]])


def train_chunks(store: store_lib.Store, layers: Sequence[str], rows: np.ndarray,
                 batch_size: int, seed: int, steps_per_call: int, num_steps: int
                 ) -> Iterator[Tuple[Dict[str, np.ndarray], np.ndarray]]:
  """The training batches of `num_steps` steps over `rows` of the store, `steps_per_call` at a
  time (features `[k, B, D]` per layer, labels `[k, B]`), read one chunk ahead in a thread.
  Batches follow `epoch_orders` over `rows`: the same whatever the grouping and the chunking."""
  orders = (rows[idx] for order in epoch_orders(len(rows), batch_size, seed) for idx in order)

  def read(batches):
    flat = np.concatenate(batches)
    shape = [len(batches), len(batches[0])]
    return ({name: store.read(name, flat).reshape(shape + [-1]) for name in layers},
            store.labels[flat].reshape(shape))

  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    pending, done = None, 0
    while done < num_steps or pending is not None:
      ahead = None
      if done < num_steps:
        count = min(steps_per_call, num_steps - done)
        ahead = pool.submit(read, [next(orders) for _ in range(count)])
        done += count
      if pending is not None:
        yield pending.result()
      pending = ahead


def eval_chunks(store: store_lib.Store, layers: Sequence[str], rows: np.ndarray,
                batch_size: int) -> Iterator[Tuple[Dict[str, np.ndarray], np.ndarray]]:
  """`rows` of the store in order, `batch_size` at a time (one batch per chunk)."""
  for start in range(0, len(rows), batch_size):
    idx = store_lib.as_rows(rows[start:start + batch_size])
    yield ({name: store.read(name, idx)[None] for name in layers}, store.labels[idx][None])


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Training steps per epoch: full batches only (one smaller batch when N < batch_size)."""
  return max(1, num_examples // batch_size)


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


def train_probes(probes: Probes, chunks: Iterable, num_steps: int,
                 feature_fn: Optional[Callable] = None, log_every_s: float = 30.0,
                 description: str = "heads") -> Dict[str, np.ndarray]:
  """Trains all heads at once for `num_steps` steps over `chunks` of (inputs, labels), each a
  run of consecutive batches stacked on a first axis (`train_chunks`), trained on one step after
  the other in one call of the compiled loop.

  Inputs are feature dicts, or whatever `feature_fn` turns into them inside the step: images
  through the frozen backbone (the on-the-fly protocol). Returns the last step's loss per layer
  and setting.
  """
  variables = probes.trainable_variables

  def one_step(inputs, labels):
    features = feature_fn(inputs) if feature_fn is not None else inputs
    features = {name: tf.stop_gradient(features[name]) for name in probes.layers}
    with tf.GradientTape() as tape:
      total, cross_entropy = probes.losses(features, labels, training=True)
    probes.apply_gradients(tape.gradient(total, variables))
    return cross_entropy

  def steps(stacked_inputs, stacked_labels):
    losses = {name: tf.zeros([len(probes.settings[name])]) for name in probes.layers}
    for i in tf.range(tf.shape(stacked_labels)[0]):
      inputs = tf.nest.map_structure(lambda t, i=i: t[i], stacked_inputs)
      losses = one_step(inputs, stacked_labels[i])
    return losses

  compiled = None
  start = last_log = time.time()
  done, losses = 0, {}
  for inputs, labels in chunks:
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    labels = tf.cast(labels, tf.int32)
    if compiled is None:  # Traced once: a shorter chunk reuses the trace.
      compiled = tf.function(steps, input_signature=relaxed_signature((inputs, labels), 2))
    losses = compiled(inputs, labels)
    done += int(labels.shape[0])
    now = time.time()
    if now - last_log >= log_every_s or done >= num_steps:
      last_log = now
      rate = done / max(now - start, 1e-9)
      mean_loss = float(np.mean([float(tf.reduce_min(v)) for v in losses.values()]))
      logging.info("%s: step %d/%d, mean of the layers' lowest loss %.4f, %.1f steps/s, ETA %.0fs",
                   description, done, num_steps, mean_loss, rate, (num_steps - done) / rate)
    if done >= num_steps:
      break
  if done < num_steps:
    raise ValueError(f"the training batches ran out after {done} of {num_steps} steps")
  return {name: v.numpy() for name, v in losses.items()}


def evaluate_probes(probes: Probes, chunks: Iterable, feature_fn: Optional[Callable] = None
                    ) -> Dict[str, List[Dict[str, float]]]:
  """Per layer and setting: top1, top5 (top-k with k = min(5, num_classes)) and mean
  cross-entropy `loss`, over `chunks` of one batch each (`eval_chunks`)."""
  k = min(5, probes.num_classes)

  def step(inputs, labels):
    inputs, labels = tf.nest.map_structure(lambda t: t[0], (inputs, labels))
    features = feature_fn(inputs) if feature_fn is not None else inputs
    logits = probes.logits(features, training=False)
    out = {}
    for name in probes.layers:
      top = tf.math.top_k(logits[name], k).indices  # [S, B, k]
      hits = tf.cast(tf.equal(top, labels[None, :, None]), tf.float32)
      tiled = tf.broadcast_to(labels[None], tf.shape(logits[name])[:2])
      loss = tf.nn.sparse_softmax_cross_entropy_with_logits(tiled, logits[name])
      out[name] = tf.stack([tf.reduce_sum(hits[..., 0], 1), tf.reduce_sum(hits, [1, 2]),
                            tf.reduce_sum(loss, 1)], axis=1)  # [S, 3]
    return out

  sums = {name: np.zeros([len(probes.settings[name]), 3], np.float64) for name in probes.layers}
  count, compiled = 0, None
  for inputs, labels in chunks:
    inputs = tf.nest.map_structure(tf.convert_to_tensor, inputs)
    labels = tf.cast(labels, tf.int32)
    if compiled is None:
      compiled = tf.function(step, input_signature=relaxed_signature((inputs, labels), 2))
    for name, value in compiled(inputs, labels).items():
      sums[name] += value.numpy()
    count += int(labels.shape[1])
  if not count:
    raise ValueError("no evaluation examples")
  return {name: [dict(top1=float(r[0] / count), top5=float(r[1] / count),
                      loss=float(r[2] / count)) for r in s] for name, s in sums.items()}
