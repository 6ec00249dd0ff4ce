"""The method contract for state that the gradient does not train (methods/base.py): the teacher's
momentum schedule, its moving average, the variables the optimiser sees, the export of either
network, and a stopped run that resumes with the same teacher and queue."""

import contextlib
import dataclasses
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from core import interrupts
from core.config import Config
from core.errors import ConfigError
import methods
from methods import base
from methods import byol
from methods import moco
from training import export as export_lib
from training import trainer as trainer_lib
from training import validation


@pytest.mark.parametrize("progress,expected", [(0.0, 0.996), (0.5, 0.998), (0.25, None),
                                               (1.0, 1.0)])
def test_byols_momentum_rises_from_its_start_to_one_on_a_cosine(progress, expected):
  """tau = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2 (Grill et al. 2020, section 3.2)."""
  config = Config(task="byol", workdir="/unused")
  got = float(base.teacher_momentum(config, byol.TEACHER, tf.constant(progress)))
  if expected is None:
    expected = 1 - 0.004 * (np.cos(np.pi * progress) + 1) / 2
  assert got == pytest.approx(expected, abs=1e-7)


def test_the_flags_override_the_methods_momentum_and_schedule():
  default = Config(task="moco", workdir="/unused")
  assert float(base.teacher_momentum(default, moco.TEACHER, tf.constant(0.7))) == \
      pytest.approx(0.999)
  cosine = Config(task="moco", workdir="/unused", teacher_momentum=0.9,
                  teacher_momentum_schedule="cosine")
  assert float(base.teacher_momentum(cosine, moco.TEACHER, tf.constant(0.5))) == \
      pytest.approx(0.95)
  constant = Config(task="byol", workdir="/unused", teacher_momentum_schedule="constant")
  assert float(base.teacher_momentum(constant, byol.TEACHER, tf.constant(0.9))) == \
      pytest.approx(0.996)


def _tiny(task, **overrides):
  values = dict(task=task, workdir="/unused", preprocessing="resize,simclr_views,-1_to_1",
                architecture="resnet50", filters_factor=1, proj_hidden_dim=16, proj_out_dim=8,
                batch_size=8, moco_queue_size=16, shuffle_bn_groups=2, resize_size=(16, 16),
                crop_size=(16, 16))
  values.update(overrides)
  return Config(**values)


@pytest.fixture(scope="module")
def byol_model():
  tf.keras.utils.set_random_seed(1)
  return byol.build_model(_tiny("byol"), (2, 16, 16, 3), None)


def test_the_teacher_starts_as_the_online_network_and_follows_its_trainable_weights(byol_model):
  model = byol_model
  for t, o in zip(model.teacher.weights, model.online.weights):
    np.testing.assert_array_equal(t.numpy(), o.numpy())
  rng = np.random.default_rng(0)
  for v in model.online.weights:  # Every online weight moves, the moving statistics too.
    v.assign(v.numpy() * rng.uniform(0.5, 1.5, size=v.shape).astype(np.float32))
  before = [t.numpy() for t in model.teacher.weights]
  model.follow(tf.constant(0.75))
  moved = {id(v) for v in model.teacher.trainable_weights}
  for t, o, old in zip(model.teacher.weights, model.online.weights, before):
    if id(t) in moved:
      np.testing.assert_allclose(t.numpy(), 0.75 * old + 0.25 * o.numpy(), rtol=1e-6, atol=1e-6)
    else:  # A batch norm's moving statistics: its own, from its own batches.
      np.testing.assert_array_equal(t.numpy(), old)
  assert len(moved) == len(model.online.trainable_weights) > 0
  assert len(model.teacher.weights) > len(moved)


def test_the_optimiser_trains_the_online_network_and_not_the_teacher(byol_model):
  trained = {id(v) for v in base.trained_variables(byol_model)}
  assert not trained & {id(v) for v in byol_model.teacher.variables}
  assert trained == {id(v) for v in byol_model.online.trainable_variables +
                     byol_model.predictor.trainable_variables}
  assert base.backbone_of(byol_model) is byol_model.online.backbone
  assert base.exported_model(byol_model) is byol_model.online
  assert base.exported_model(byol_model, teacher=True) is byol_model.teacher


def test_an_export_serves_the_online_network_or_with_export_teacher_the_teachers(byol_model,
                                                                                  tmp_path):
  model = byol_model
  images = tf.random.stateless_uniform([3, 16, 16, 3], [0, 1], -1, 1)
  online, teacher = (model.online(images, training=False),
                     model.teacher(images, training=False))
  assert np.abs(online["pre_logits"].numpy() - teacher["pre_logits"].numpy()).max() > 1e-3
  for network, expected in (("online", online), ("teacher", teacher)):
    served = base.exported_model(model, teacher=network == "teacher")
    path = export_lib.export(served, str(tmp_path / network), (16, 16, 3), {"network": network})
    out = tf.saved_model.load(path).signatures["representation"](images=images)
    for name in ("block2", "pre_logits", "logits"):
      scale = np.abs(expected[name].numpy()).max()
      np.testing.assert_allclose(out[name].numpy(), expected[name].numpy(), rtol=1e-4,
                                 atol=1e-5 * scale)
    # Only the network it serves: no second backbone, queue or predictor.
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    sizes = sum(int(np.prod(s)) for k, s in reader.get_variable_to_shape_map().items()
                if not k.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))
    assert sizes == sum(int(np.prod(v.shape)) for v in served.weights)


def test_local_crops_need_a_method_that_uses_them():
  with pytest.raises(ConfigError, match="--local_crops=4: --task=byol does not use multi-crop's "
                                        "local views; the tasks that do: dino, swav"):
    validation.validate(_tiny("byol", local_crops=4, local_crop_size=8), check_data=False)
  validation.validate(_tiny("swav", local_crops=4, local_crop_size=8), check_data=False)


def test_export_teacher_needs_a_method_with_one():
  with pytest.raises(ConfigError, match="--export_teacher: --task=simclr has no teacher; the "
                                        "tasks with one: byol, dino, moco"):
    validation.validate(_tiny("simclr", export_teacher=True), check_data=False)
  assert sorted(t for t in methods.TASKS.names()
                if hasattr(methods.get_method(t), "TEACHER")) == ["byol", "dino", "moco"]


class _StopAt:
  """Asks the trainer to stop once its step reaches `at` (as a signal would)."""

  def __init__(self, trainer, at):
    self.trainer, self.at = trainer, at

  @property
  def requested(self):
    return signal.SIGTERM if int(self.trainer.step.numpy()) >= self.at else None

  def saving(self):
    return contextlib.nullcontext()


def _state(model):
  return {"online": [v.numpy() for v in model.online.weights],
          "teacher": [v.numpy() for v in model.teacher.weights],
          "queue": model.queue.numpy(), "pointer": int(model.queue_pointer.numpy())}


@pytest.mark.slow
def test_a_stopped_run_resumes_with_the_same_teacher_and_queue(tmp_path, shapes_data_dir):
  """MoCo stopped at step 3 of 6: a new trainer restores the online network, the key encoder,
  the queue and its pointer exactly as they were, and goes on moving them."""
  config = _tiny("moco", workdir=str(tmp_path / "wd"), dataset="shapes_small",
                 data_dir=shapes_data_dir, train_split="train[:48]", epochs=1,
                 log_every_steps=1, save_checkpoints_secs=None, optimizer="adam", lr=0.01,
                 teacher_momentum=0.5, blur_probability=0.0)
  method = methods.get_method("moco")
  strategy = trainer_lib.make_strategy("default")
  first = trainer_lib.Trainer(config, method, strategy, print_fn=lambda _: None)
  start = _state(first.model)
  with pytest.raises(interrupts.Interrupted):
    first.train(_StopAt(first, 3))
  assert int(first.step.numpy()) == 3
  stopped = _state(first.model)
  assert stopped["pointer"] == 3 * 8 % 16
  assert not np.array_equal(stopped["queue"], start["queue"])
  assert any(not np.array_equal(a, b) for a, b in zip(stopped["teacher"], start["teacher"]))
  assert any(not np.array_equal(a, b) for a, b in zip(stopped["teacher"], stopped["online"]))

  second = trainer_lib.Trainer(config, method, strategy, print_fn=lambda _: None)
  np.testing.assert_array_equal(second.model.queue.numpy(), start["queue"])  # Before restoring.
  assert second.restore() == 3
  restored = _state(second.model)
  assert restored["pointer"] == stopped["pointer"]
  np.testing.assert_array_equal(restored["queue"], stopped["queue"])
  for key in ("online", "teacher"):
    for a, b in zip(restored[key], stopped[key]):
      np.testing.assert_array_equal(a, b)
  second.train()
  assert int(second.step.numpy()) == 6
  done = _state(second.model)
  assert done["pointer"] == 6 * 8 % 16
  assert not np.array_equal(done["queue"], stopped["queue"])
  assert any(not np.array_equal(a, b) for a, b in zip(done["teacher"], stopped["teacher"]))


@pytest.mark.parametrize("schedule,goes_on", [("cosine", False), ("constant", True)])
def test_a_longer_run_goes_on_only_where_the_teachers_momentum_does_not_span_training(
    tmp_path, schedule, goes_on):
  """A longer --epochs on the step schedule goes on from the checkpoint where every rate up to it
  is the same: not under BYOL's momentum rising to 1 over the whole run, which would have been
  lower at every step done."""
  import train_and_eval  # pylint: disable=g-import-not-at-top
  from core import files  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "wd"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "checkpoints" / "ckpt-2.index").write_text("")
  (workdir / "checkpoints" / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n')
  trained = _tiny("byol", workdir=str(workdir), lr_schedule="step", epochs=1,
                  teacher_momentum_schedule=schedule)
  files.write_json_atomic(str(workdir / files.CONFIG_FILE), trained.to_dict())
  longer = trainer_lib.Plan(num_train_examples=32, steps_per_epoch=4.0, total_steps=8)
  config = _tiny("byol", workdir=str(workdir), lr_schedule="step", epochs=2,
                 teacher_momentum_schedule=schedule)
  if goes_on:
    move, note = train_and_eval.check_workdir(config, longer)
    assert move is None and note.startswith("--epochs 1 -> 2: training goes on from step 2")
  else:
    with pytest.raises(ConfigError, match=r"other settings \(epochs 1 -> 2, up to step 2; the "
                                          r"teacher's momentum rises to 1 over --epochs\)"):
      train_and_eval.check_workdir(config, longer)


@pytest.mark.slow
def test_a_finished_run_exports_its_teacher_without_training_again(tmp_path, shapes_data_dir):
  """--export_teacher acts after training (options.AFTER_TRAINING): the same command with it on
  a finished BYOL run is not refused, trains nothing, and rewrites the export as the teacher's
  network (export_info.json says which), whose outputs are not the online network's."""
  import train_and_eval  # pylint: disable=g-import-not-at-top
  config = _tiny("byol", workdir=str(tmp_path / "wd"), dataset="shapes_small",
                 data_dir=shapes_data_dir, train_split="train[:32]", epochs=1, lr=0.05,
                 save_checkpoints_secs=None, run_eval=False)
  lines = []
  first = train_and_eval.run(config, print_fn=lines.append)
  images = tf.random.uniform([4, 16, 16, 3], -1, 1, seed=0)

  def served():
    info = export_lib.load_export_info(first["export_dir"])
    out = tf.saved_model.load(first["export_dir"]).signatures["representation"](images=images)
    return info["network"], out["pre_logits"].numpy()

  online = served()
  trained_steps = [l for l in lines if l.startswith("step ")]
  lines.clear()
  again = train_and_eval.run(dataclasses.replace(config, export_teacher=True),
                             print_fn=lines.append)
  teacher = served()
  assert again["step"] == first["step"] == 4 and trained_steps
  assert not [l for l in lines if l.startswith("step ")]  # Nothing trained again.
  assert (online[0], teacher[0]) == ("online", "teacher")
  assert not np.allclose(online[1], teacher[1], atol=1e-4)
