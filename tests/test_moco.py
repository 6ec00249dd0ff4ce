"""MoCo v2: InfoNCE against NumPy written from the paper's equations, the queue's order (the oldest
keys leave first; a batch's positives are not among its negatives), shuffled batch norm (each
key made in a shuffled group and put back with its image), the queue over two replicas, the
settings it refuses."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import base
from methods import moco
from tests import replicas


def numpy_info_nce(q, k, queue, temperature):
  """He et al. 2020, eq. 1: L_q = -log exp(q.k+/t) / (exp(q.k+/t) + sum_i exp(q.k_i/t)), with
  q, k+ and the queue's k_i unit vectors; (losses, whether k+ is the most similar)."""
  q, k, queue = (np.asarray(a, np.float64) for a in (q, k, queue))
  positive = (q * k).sum(1) / temperature
  negatives = q @ queue.T / temperature
  everything = np.concatenate([positive[:, None], negatives], 1)
  top = everything.max(1)
  log_sum = top + np.log(np.exp(everything - top[:, None]).sum(1))
  return log_sum - positive, positive >= negatives.max(1)


def _unit(rng, *shape):
  v = rng.normal(size=shape)
  return (v / np.linalg.norm(v, axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed,n,dim,size,temperature", [(0, 4, 3, 8, 0.2), (1, 16, 128, 64, 0.07),
                                                          (2, 5, 16, 1000, 1.0)])
def test_info_nce_matches_numpy(seed, n, dim, size, temperature):
  rng = np.random.default_rng(seed)
  q, k, queue = _unit(rng, n, dim), _unit(rng, n, dim), _unit(rng, size, dim)
  k[0] = q[0]  # One query that finds its key.
  loss, hits = moco.info_nce(tf.constant(q), tf.constant(k), tf.constant(queue), temperature)
  expected, found = numpy_info_nce(q, k, queue, temperature)
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(hits.numpy(), found.astype(np.float32))
  assert hits.numpy()[0] == 1.0


def tiny_config(**overrides):
  values = dict(task="moco", workdir="/unused", preprocessing="resize,simclr_views,-1_to_1",
                architecture="resnet50", filters_factor=1, proj_hidden_dim=32, proj_out_dim=8,
                batch_size=4, moco_queue_size=12, shuffle_bn_groups=2, temperature=0.2)
  values.update(overrides)
  return Config(**values)


@pytest.fixture(scope="module")
def model():
  tf.keras.utils.set_random_seed(0)
  return moco.build_model(tiny_config(), (2, 16, 16, 3), None)


def test_the_queue_starts_as_unit_vectors_and_the_oldest_keys_leave_first(model):
  queue = model.queue.numpy()
  assert queue.shape == (12, 8)
  np.testing.assert_allclose(np.linalg.norm(queue, axis=1), 1.0, rtol=1e-5)
  assert int(model.queue_pointer.numpy()) == 0
  start = queue.copy()
  batches = [np.full((4, 8), i + 1, np.float32) for i in range(4)]
  for i, keys in enumerate(batches):
    moco.enqueue(model, tf.constant(keys))
    assert int(model.queue_pointer.numpy()) == (i + 1) * 4 % 12
    now = model.queue.numpy()
    if i < 2:  # Rows of the start not yet replaced are still there.
      np.testing.assert_array_equal(now[(i + 1) * 4:], start[(i + 1) * 4:])
  # Three batches fill the queue; the fourth replaces the first (the oldest).
  np.testing.assert_array_equal(model.queue.numpy(),
                                np.concatenate([batches[3], batches[1], batches[2]]))
  model.queue.assign(start)
  model.queue_pointer.assign(0)


class _PerImage:
  """A stand-in network whose `logits` of an image depend on it alone: its mean per channel and
  a constant (so that batch statistics, shuffling and grouping cannot show)."""

  def __init__(self):
    self.batches = []

  def __call__(self, images, training=False):
    self.batches.append(int(images.shape[0]))
    means = tf.reduce_mean(images, axis=[1, 2])
    return {"logits": tf.concat([means, tf.ones_like(means[:, :1])], 1)}


class _Stand:
  def __init__(self, queue):
    self.online, self.teacher = _PerImage(), _PerImage()
    self.queue = tf.Variable(queue)
    self.queue_pointer = tf.Variable(0)


def test_each_key_returns_to_its_image_after_the_shuffled_groups_and_positives_are_not_negatives():
  """model_fn in training: queries and keys made in 2 groups of 4; each key is that of its own
  image's second view (put back after the shuffle); the loss is InfoNCE against the queue as it
  was before the step; after_step then puts the batch's keys in the queue."""
  rng = np.random.default_rng(4)
  images = rng.uniform(-1, 1, size=(8, 2, 6, 6, 3)).astype(np.float32)
  queue = _unit(rng, 16, 4)
  stand = _Stand(queue)
  config = tiny_config(batch_size=8, shuffle_bn_groups=2, moco_queue_size=16,
                       teacher_momentum=0.9)
  spec = moco.model_fn(stand, {"image": tf.constant(images)}, base.TRAIN, config)
  assert stand.online.batches == [4, 4] and stand.teacher.batches == [4, 4]
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  with_one = lambda m: np.concatenate([m, np.ones((len(m), 1))], 1)
  q = unit(with_one(images[:, 0].mean(axis=(1, 2))))
  k = unit(with_one(images[:, 1].mean(axis=(1, 2))))
  np.testing.assert_allclose(spec.updates["keys"].numpy(), k, rtol=1e-5, atol=1e-6)
  expected, _ = numpy_info_nce(q, k, queue, 0.2)
  np.testing.assert_allclose(spec.metrics["loss"].numpy(), expected, rtol=1e-5, atol=1e-5)
  stand.follow = lambda momentum: None
  moco.after_step(stand, spec.updates, tf.constant(0.0), config)
  np.testing.assert_allclose(stand.queue.numpy()[:8], k, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(stand.queue.numpy()[8:], queue[8:])
  assert int(stand.queue_pointer.numpy()) == 8


def test_groups_have_their_own_batch_statistics(model):
  """in_groups on a real network in training equals the network run on each half alone."""
  images = tf.random.stateless_uniform([4, 16, 16, 3], [1, 2], -1, 1)
  grouped = moco.in_groups(model.online, images, 2, training=True)["logits"]
  apart = tf.concat([model.online(images[:2], training=True)["logits"],
                     model.online(images[2:], training=True)["logits"]], 0)
  whole = model.online(images, training=True)["logits"]
  np.testing.assert_allclose(grouped.numpy(), apart.numpy(), rtol=1e-4, atol=1e-5)
  assert np.abs(grouped.numpy() - whole.numpy()).max() > 1e-3


_TWO_REPLICAS = textwrap.dedent("""
    from tests import replicas
    strategy = replicas.two_cpus()
    import tensorflow as tf
    from methods import moco
    q, k, queue = replicas.inputs()

    class Queue:
      def __init__(self):
        self.queue = tf.Variable(queue)
        self.queue_pointer = tf.Variable(0)

    one = Queue()
    loss_one = float(tf.reduce_mean(moco.info_nce(q, k, one.queue, 0.2)[0]))
    moco.enqueue(one, k)
    with strategy.scope():
      two = Queue()

    @tf.function
    def step(q, k):
      # As the trainer: each replica's mean over the number of replicas, summed; then the keys
      # of every replica, gathered in replica order, into the queue.
      loss = strategy.run(lambda a, b: tf.reduce_mean(moco.info_nce(a, b, two.queue, 0.2)[0]) / 2,
                          args=(q, k))
      moco.enqueue(two, strategy.gather(k, axis=0))
      return strategy.reduce("SUM", loss, axis=None)

    loss_two = float(step(replicas.split(strategy, q), replicas.split(strategy, k)))
    replicas.emit([loss_one, one.queue.numpy().tolist(), int(one.queue_pointer.numpy())],
                  [loss_two, two.queue.numpy().tolist(), int(two.queue_pointer.numpy())])
    """)


def test_loss_and_queue_over_two_replicas_match_one_device():
  rng = np.random.default_rng(9)
  q, k, queue = _unit(rng, 8, 6), _unit(rng, 8, 6), _unit(rng, 16, 6)
  (loss_one, queue_one, pointer_one), (loss_two, queue_two, pointer_two) = replicas.run(
      _TWO_REPLICAS, q, k, queue)
  np.testing.assert_allclose(loss_one, numpy_info_nce(q, k, queue, 0.2)[0].mean(), rtol=1e-5)
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-5)
  np.testing.assert_array_equal(np.array(queue_two), np.array(queue_one))
  np.testing.assert_array_equal(np.array(queue_one)[:8], k)
  assert pointer_one == pointer_two == 8


def test_validation():
  with pytest.raises(ConfigError, match="needs the 'simclr_views' op"):
    moco.validate(tiny_config(preprocessing="resize,-1_to_1"))
  with pytest.raises(ConfigError, match="--shuffle_bn_groups=3 must divide --batch_size=4"):
    moco.validate(tiny_config(shuffle_bn_groups=3))
  with pytest.raises(ConfigError, match="--shuffle_bn_groups=4 must divide --batch_size=4 into "
                                        "groups of at least 2"):
    moco.validate(tiny_config(shuffle_bn_groups=4))
  with pytest.raises(ConfigError, match="--moco_queue_size=10 must be a multiple of "
                                        "--batch_size=4"):
    moco.validate(tiny_config(moco_queue_size=10))
  moco.check_replicas(tiny_config(batch_size=16, shuffle_bn_groups=4), 2)  # 2 groups of 4 each.
  with pytest.raises(ConfigError, match="--shuffle_bn_groups=4 must divide each of the 4 "
                                        "replicas' 4 images into groups of at least 2"):
    moco.check_replicas(tiny_config(batch_size=16, shuffle_bn_groups=4), 4)
