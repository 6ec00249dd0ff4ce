"""DINO: the loss against NumPy written from the paper's equations (every pair of a teacher view
and another student view, with and without local views), the centre and the teacher temperature
after each step, the head's weight-normalised last layer, a step that trains the student only,
and what it refuses."""

import numpy as np
import pytest
import tensorflow as tf

from core.config import Config
from core.errors import ConfigError
from methods import base
from methods import dino
from training import validation


def numpy_dino_loss(student, teacher, center, t_s, t_t):
  """Caron et al. 2021, Algorithm 1 and eq. 3 with multi-crop: for each image, H(P_t(x_v),
  P_s(x_w)) summed over the teacher's global views v and the student's views w != v, divided by
  their number; P_t = softmax((g_t - C) / t_t), P_s = softmax(g_s / t_s)."""
  def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)
  student, teacher = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
  losses = []
  for s, t in zip(student, teacher):
    terms = []
    for v in range(2):
      q = softmax((t[v] - center) / t_t)
      for w in range(len(s)):
        if w != v:
          terms.append(-(q * np.log(softmax(s[w] / t_s))).sum())
    losses.append(np.mean(terms))
  return np.array(losses)


@pytest.mark.parametrize("views", [2, 6])
def test_loss_matches_numpy(views):
  rng = np.random.default_rng(views)
  student = rng.normal(size=(5, views, 7)).astype(np.float32)
  teacher = rng.normal(size=(5, 2, 7)).astype(np.float32)
  center = rng.normal(size=7).astype(np.float32) * 0.1
  loss, hits, entropy = dino.dino_loss(tf.constant(student), tf.constant(teacher),
                                       tf.constant(center), 0.1, tf.constant(0.04))
  np.testing.assert_allclose(loss.numpy(), numpy_dino_loss(student, teacher, center, 0.1, 0.04),
                             rtol=1e-5, atol=1e-5)
  assert hits.shape == (5, 2) and entropy.shape == (5, 2)
  # A hit: the teacher's most probable output on one view is the student's on the other.
  expected = np.argmax(teacher - center, -1) == np.argmax(student[:, [1, 0]], -1)
  np.testing.assert_array_equal(hits.numpy(), expected.astype(np.float32))


def test_teacher_temperature_warms_up_linearly():
  config = _tiny(warmup_teacher_temperature=0.04, teacher_temperature=0.07,
                 warmup_teacher_temperature_epochs=30)
  got = [float(dino.teacher_temperature(config, tf.constant(e))) for e in (0.0, 15.0, 30.0, 90.0)]
  np.testing.assert_allclose(got, [0.04, 0.055, 0.07, 0.07], rtol=1e-6)
  assert float(dino.teacher_temperature(_tiny(teacher_temperature=0.05), 0.0)) == (
      pytest.approx(0.05))
  # The first step's temperature is the schedule's at epoch 0: without a warm-up, the final one.
  for warmup, first in ((30, 0.04), (0, 0.07)):
    model = dino.build_model(_tiny(warmup_teacher_temperature=0.04, teacher_temperature=0.07,
                                   warmup_teacher_temperature_epochs=warmup), (2, 16, 16, 3), None)
    assert float(model.teacher_temperature) == pytest.approx(first)


def test_head_has_a_unit_norm_last_layer_on_a_unit_bottleneck():
  head = dino.DINOHead(hidden=16, bottleneck=8, prototypes=12)
  x = tf.random.normal([4, 10])
  out = head(x)
  assert tuple(out.shape) == (4, 12)
  # Each output is the cosine of the normalised bottleneck and a unit column: in [-1, 1], and
  # scaling the last layer's weights changes nothing.
  assert float(tf.reduce_max(tf.abs(out))) <= 1.0 + 1e-6
  head.last.kernel.assign(head.last.kernel * 3.0)
  np.testing.assert_allclose(head(x).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)


def _tiny(**overrides):
  values = dict(task="dino", workdir="/unused", preprocessing="resize,simclr_views,-1_to_1",
                architecture="resnet50", filters_factor=1, proj_hidden_dim=16, proj_out_dim=8,
                dino_prototypes=12, batch_size=8, resize_size=(16, 16), crop_size=(16, 16),
                epochs=10)
  values.update(overrides)
  return Config(**values)


def test_a_step_trains_the_student_and_after_step_moves_teacher_centre_and_temperature():
  tf.keras.utils.set_random_seed(3)
  config = _tiny(local_crops=2, local_crop_size=8, warmup_teacher_temperature=0.04,
                 teacher_temperature=0.07, warmup_teacher_temperature_epochs=5)
  model = dino.build_model(config, (2, 16, 16, 3), None)
  batch = {"image": tf.random.uniform([4, 2, 16, 16, 3], -1, 1),
           "local_views": tf.random.uniform([4, 2, 8, 8, 3], -1, 1)}
  variables = base.trained_variables(model)
  assert not {id(v) for v in variables} & {id(v) for v in model.teacher.variables}
  with tf.GradientTape() as tape:
    spec = dino.model_fn(model, batch, base.TRAIN, config)
  grads = tape.gradient(spec.loss, variables)
  assert all(g is not None for g in grads)
  assert spec.metrics["loss"].shape == [4] and spec.metrics["accuracy"].shape == [8]
  assert spec.updates["teacher_sum"].shape == [1, 12]
  before = [v.numpy() for v in model.teacher.trainable_weights]
  tf.keras.optimizers.SGD(0.5).apply_gradients(zip(grads, variables))
  teacher = model.teacher(base.flatten_stacked(batch["image"]), training=True)["logits"]
  mean = tf.reduce_mean(teacher, axis=0).numpy()
  updates = {k: tf.concat([v, v], axis=0) for k, v in spec.updates.items()}  # Two replicas.
  dino.after_step(model, updates, tf.constant(0.5), config)
  np.testing.assert_allclose(model.center.numpy(), 0.1 * mean, rtol=1e-4, atol=1e-6)
  assert float(model.teacher_temperature) == pytest.approx(0.07)  # Epoch 5 of 10.
  m = float(base.teacher_momentum(config, dino.TEACHER, tf.constant(0.5)))
  for b, t, o in zip(before, model.teacher.trainable_weights, model.online.trainable_weights):
    np.testing.assert_allclose(t.numpy(), m * b + (1 - m) * o.numpy(), rtol=1e-5, atol=1e-6)


def test_validation():
  with pytest.raises(ConfigError, match="needs the 'simclr_views' op"):
    dino.validate(_tiny(preprocessing="resize,-1_to_1"))
  validation.validate(_tiny(local_crops=4, local_crop_size=8, export_teacher=True),
                      check_data=False)
