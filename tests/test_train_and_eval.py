"""The pretext pipeline end to end: config validation, training, resuming, export."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from core import config as config_lib
from core import files
from core.config import Config
from core.errors import ConfigError
from tests.conftest import REPO_ROOT
import methods
import train_and_eval
from training import export as export_lib
from training import run_record
from training import trainer as trainer_lib


def small_config(workdir, data_dir, **overrides) -> Config:
  """Rotation with a narrow VGG at 32x32 on the small embedded set: seconds per run.

  The trainer does not depend on the architecture; VGG19 at width 1 builds and traces fastest.
  """
  settings = dict(
      task="rotation", workdir=str(workdir), dataset="shapes_small", data_dir=data_dir,
      architecture="vgg19", filters_factor=1, preprocessing="resize,-1_to_1,rotate",
      resize_size=(32, 32), batch_size=8, eval_batch_size=16, lr=0.1, lr_scale_batch_size=8,
      epochs=1, train_split="train[:16]", val_split="test[:32]", log_every_steps=1,
      save_checkpoints_secs=None)
  settings.update(overrides)
  return Config(**settings)


def _quiet(_):
  pass


def test_rotation_loss_drops_when_fitting_a_small_split(tmp_path, shapes_data_dir):
  lines = []
  config = small_config(tmp_path / "wd", shapes_data_dir, train_split="train[:32]", batch_size=16,
                        epochs=30, log_every_steps=1, optimizer="adam", lr=0.01,
                        lr_scale_batch_size=16, architecture="resnet50")
  results = train_and_eval.run(config, print_fn=lines.append)
  losses = _step_losses(lines)
  assert results["step"] == 60
  assert len(losses) == 60
  assert losses[0] == pytest.approx(np.log(4), abs=0.1)  # Starts at chance.
  assert np.mean(losses[-10:]) < 0.4 * np.mean(losses[:10]), losses
  assert os.path.exists(os.path.join(config.export_dir, "saved_model.pb"))
  assert any("img/s" in l and "ETA" in l for l in lines)


def test_train_step_matches_a_hand_written_sgd_step(tmp_path, shapes_data_dir):
  """Two trainer steps equal two steps of SGD with momentum on loss + wd * sum(w**2) / 2."""
  import keras  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  # Batch 32: with 8 images, batch norm over VGG's 1x1 last blocks amplifies the rounding
  # differences between the compiled and the eager step beyond 1e-4 in two steps.
  config = small_config(tmp_path / "wd", shapes_data_dir, task="supervised",
                        preprocessing="resize,-1_to_1", weight_decay=0.01, lr=0.05,
                        batch_size=32, lr_scale_batch_size=32, train_split="train[:64]")
  trainer = trainer_lib.Trainer(config, methods.get_method("supervised"), print_fn=_quiet)
  model = trainer.model
  batch = next(iter(trainer.train_data))
  initial = [v.numpy() for v in model.variables]
  initial_trainable = [v.numpy() for v in model.trainable_variables]
  trainer._train_step_fn()(iter([batch, batch]), tf.constant(2))
  trained_values = [v.numpy() for v in model.trainable_variables]
  for v, value in zip(model.variables, initial):
    v.assign(value)
  opt = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)  # lr scaled by 32/32.
  for _ in range(2):
    with tf.GradientTape() as tape:
      logits = model(batch["image"], training=True)["logits"]
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(batch["label"], logits))
      loss += 0.01 * sum(tf.reduce_sum(v**2) / 2 for v in model.trainable_variables
                         if v.name == "kernel")
    opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                            model.trainable_variables))
  assert int(trainer.step.numpy()) == 2
  for got, v in zip(trained_values, model.trainable_variables):
    np.testing.assert_allclose(got, v.numpy(), rtol=1e-4, atol=1e-6)
  assert all(got.shape == init.shape for got, init in zip(trained_values, initial_trainable))
  assert any(np.abs(got - init).max() > 1e-4 for got, init in zip(trained_values,
                                                                  initial_trainable))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_data_dir):
  """One short rotation run with --run_eval, shared by the tests that only read its outputs."""
  config = small_config(tmp_path_factory.mktemp("trained") / "wd", shapes_data_dir, run_eval=True)
  return config, train_and_eval.run(config, print_fn=_quiet)


def test_run_eval_writes_pretext_results(trained):
  config, results = trained
  with open(os.path.join(config.workdir, "pretext_results.json")) as f:
    saved = json.load(f)
  assert saved["metrics"]["num_examples"] == 32 * 4  # Every rotation of every image.
  assert 0.0 <= saved["metrics"]["accuracy"] <= 1.0
  assert saved["metrics"] == results["eval_metrics"]
  assert saved["config"]["task"] == "rotation"
  # How it was made: this checkout, this TensorFlow, this machine, the wall time per phase.
  run = saved["run"]
  head = subprocess.run(["git", "-C", REPO_ROOT, "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
  assert run["git"]["commit"] == (head or None) and isinstance(run["git"]["dirty"], bool)
  assert run["versions"]["tensorflow"] == tf.__version__
  assert run["versions"]["numpy"] == np.__version__ and run["versions"]["keras"]
  assert run["devices"]["accelerator"] is None and run["devices"]["count"] == 0
  assert run["devices"]["cpu_count"] == len(os.sched_getaffinity(0)) and run["devices"]["cpu"]
  with open("/proc/cpuinfo") as f:
    flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
  assert run["devices"]["cpu_simd"] == [n for n in run_record.SIMD_FLAGS if n in flags]
  assert run["strategy"]["replicas"] == 1 and run["random_seed"] == config.random_seed
  assert run["deterministic"] is False and "python" in run["command"]
  # The kernels it ran on: oneDNN's, as every entry point (and conftest.py) asks.
  assert run["environment"] == {"TF_ENABLE_ONEDNN_OPTS": os.environ["TF_ENABLE_ONEDNN_OPTS"]}
  assert set(saved["times"]) == {"training_s", "pretext_eval_s", "export_s", "total_s"}
  assert 0 < saved["times"]["training_s"] < saved["times"]["total_s"]
  with open(os.path.join(config.export_dir, "export_info.json")) as f:
    assert json.load(f)["run"]["git"] == run["git"]


def test_a_finished_run_evaluates_again_on_any_split(trained, tmp_path):
  """scripts/pretext_accuracy.py's path: the run's config.json and last checkpoint give its
  pretext metrics again, exactly, and on another split; a folder without a run is refused."""
  config, results = trained
  again = trainer_lib.load_run_config(config.workdir)
  assert again == config
  trainer = trainer_lib.Trainer(again, methods.get_method(again.task), print_fn=_quiet)
  assert trainer.restore() == results["step"]
  assert trainer.evaluate() == results["eval_metrics"]
  other = trainer.evaluate("train[:16]")
  assert other["num_examples"] == 16 * 4 and 0.0 <= other["accuracy"] <= 1.0
  with pytest.raises(ConfigError, match="holds no pretext run"):
    trainer_lib.load_run_config(str(tmp_path))


def test_pretext_accuracy_by_class_covers_each_class_once(trained, tmp_path):
  """Trainer.evaluate_by_label (scripts/pretext_accuracy.py --by_class): each label's images
  alone, as the split's labels say, whose weighted means are the whole split's metrics."""
  import datasets  # pylint: disable=g-import-not-at-top
  config, results = trained
  split = "train[:40]"
  labels = np.concatenate([b["label"].numpy() for b in datasets.get_data(
      config.dataset, split, is_training=False, preprocess_fn=None, batch_size=16,
      data_dir=config.data_dir)])
  # The labels in stored order, without decoding, and the images at one label's positions.
  np.testing.assert_array_equal(datasets.split_labels(config.dataset, split, config.data_dir),
                                labels)
  label = int(np.bincount(labels).argmax())
  picked = np.concatenate([b["label"].numpy() for b in datasets.get_data(
      config.dataset, split, is_training=False, preprocess_fn=None, batch_size=16,
      data_dir=config.data_dir, indices=np.flatnonzero(labels == label))])
  assert len(picked) == np.sum(labels == label) and np.all(picked == label)
  trainer = trainer_lib.Trainer(config, methods.get_method(config.task), print_fn=_quiet)
  trainer.restore()
  whole = trainer.evaluate(split)
  by_label = trainer.evaluate_by_label(split)
  counts = {int(k): int(n) for k, n in zip(*np.unique(labels, return_counts=True))}
  assert len(counts) > 1
  assert {k: m["num_examples"] for k, m in by_label.items()} == {
      k: 4 * n for k, n in counts.items()}  # Four rotations of each of its images.
  for name in ("accuracy", "loss"):
    mean = sum(m[name] * m["num_examples"] for m in by_label.values()) / whole["num_examples"]
    assert mean == pytest.approx(whole[name], rel=1e-5)
  # One class alone is what its positions in the split give.
  assert trainer.evaluate(split, np.flatnonzero(labels == label)) == by_label[label]
  # The script: the same numbers under the dataset's class names.
  kept = str(tmp_path / "pretext_accuracy.json")
  out = subprocess.run(
      [sys.executable, "scripts/pretext_accuracy.py", f"--workdir={config.workdir}",
       f"--split={split}", "--by_class", "--json", f"--json_out={kept}"], cwd=REPO_ROOT,
      check=True, capture_output=True, text=True).stdout
  record = json.loads(out.strip().splitlines()[-1])
  names = trainer.info.class_names
  assert record["metrics"]["num_examples"] == whole["num_examples"]
  assert sorted(record["by_class"]) == sorted(names[k] for k in by_label)
  for k, m in by_label.items():
    assert record["by_class"][names[k]] == pytest.approx(m, rel=1e-6)
  # --json_out: the same numbers as tables for the results page, with the run record.
  with open(kept) as f:
    bench = json.load(f)
  assert bench["run"]["git"]["commit"] and len(bench["tables"]) == 2
  header, row = bench["tables"][0]["columns"], bench["tables"][0]["rows"][0]
  assert row[:4] == [os.path.basename(config.workdir), f"{config.dataset}:{split}",
                     str(results["step"]), f"{whole['num_examples']:.0f}"]
  assert row[header.index("accuracy")] == f"{100 * whole['accuracy']:.1f}"
  per_class = {r[0]: r for r in bench["tables"][1]["rows"]}
  assert per_class.keys() == {names[k] for k in by_label}
  for k, m in by_label.items():
    assert per_class[names[k]][1] == f"{m['num_examples']:.0f}"


def test_supervised_trains_and_exports(tmp_path, shapes_data_dir):
  config = small_config(tmp_path / "wd", shapes_data_dir, task="supervised",
                        preprocessing="resize,flip_lr,-1_to_1", run_eval=True)
  results = train_and_eval.run(config, print_fn=_quiet)
  assert results["step"] == 2
  assert set(results["eval_metrics"]) >= {"accuracy", "top5", "loss"}
  info = export_lib.load_export_info(config.export_dir)
  assert info["eval_preprocessing"] == "resize,flip_lr,-1_to_1"
  assert info["end_points"][-2:] == ["pre_logits", "logits"]


_RELOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, inputs, out = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    x = tf.constant(np.load(inputs))
    rep = loaded.signatures["representation"](images=x)
    logits = loaded.signatures["serving_default"](images=x)["logits"]
    np.savez(out, serving_logits=logits.numpy(), **{k: v.numpy() for k, v in rep.items()})
    """)


def test_export_reloads_in_a_fresh_process_with_the_same_outputs(tmp_path, trained):
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  config, _ = trained
  info = export_lib.load_export_info(config.export_dir)
  assert info["task"] == "rotation" and info["input_shape"] == [32, 32, 3]
  assert info["eval_preprocessing"] == "resize,-1_to_1"  # The pretext op is dropped.
  # The live model, restored from the final checkpoint.
  trainer = trainer_lib.Trainer(config, methods.get_method("rotation"), print_fn=_quiet)
  assert trainer.restore() == 2
  for batch in (1, 3):
    x = np.random.RandomState(batch).uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", _RELOAD, config.export_dir, str(tmp_path / "x.npy"),
                    str(tmp_path / "out.npz")], check=True, cwd=REPO_ROOT)
    reloaded = np.load(tmp_path / "out.npz")
    live = trainer.model(tf.constant(x), training=False)
    assert sorted(reloaded.files) == sorted(info["end_points"] + ["serving_logits"])
    np.testing.assert_allclose(reloaded["serving_logits"], live["logits"].numpy(), rtol=1e-4,
                               atol=1e-5)
    for name in info["end_points"]:
      assert reloaded[name].shape[0] == batch
      np.testing.assert_allclose(reloaded[name], live[name].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (dict(task="split_brain"), r"unknown task 'split_brain'; valid choices: .*rotation"),
    (dict(task=None), r"--task is required"),
    (dict(architecture="resnet18"), r"unknown architecture 'resnet18'; valid choices: .*vgg19"),
    (dict(preprocessing="resize,blur,rotate"), r"'blur'.*valid.*crop"),
    (dict(dataset="mnist_typo"), r"--dataset='mnist_typo'"),
    (dict(workdir=""), r"--workdir is required"),
    (dict(preprocessing="resize,-1_to_1"), r"rotation needs the 'rotate' op"),
    (dict(mode="v3"), r"--mode='v3' is not valid; choices: v1, v2"),
    (dict(val_split="validation"), r"--val_split='validation'.*splits of shapes_small: .*test"),
])
def test_bad_config_fails_before_any_work(tmp_path, shapes_data_dir, overrides, message):
  config = dataclasses.replace(small_config(tmp_path / "wd", shapes_data_dir), **overrides)
  with pytest.raises(ConfigError, match=message):
    train_and_eval.run(config, print_fn=_quiet)
  assert not os.path.exists(tmp_path / "wd")


def test_batch_size_must_split_over_replicas(tmp_path, shapes_data_dir):
  config = small_config(tmp_path / "wd", shapes_data_dir, batch_size=10)
  with pytest.raises(ConfigError, match=r"--batch_size=10 is not divisible by the number of "
                                        r"replicas \(4\)"):
    config_lib.check_replicas(config, 4)
  config_lib.check_replicas(config, 2)


def test_workdir_of_another_run_is_refused(trained):
  config, _ = trained
  with pytest.raises(ConfigError, match=r"holds a run trained with other settings \(architecture "
                                        r"'vgg19' -> 'resnet50', filters_factor 1 -> 4, "
                                        r"weight_decay 0\.0005 -> 0\.0001, up to step 2\)"):
    train_and_eval.run(dataclasses.replace(config, architecture="resnet50", filters_factor=None),
                       print_fn=_quiet)


def _driver(args, data_dir, **kwargs):
  return subprocess.Popen(
      [sys.executable, "train_and_eval.py", "--dataset=shapes_small", f"--data_dir={data_dir}",
       *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_cli_bad_flag_is_one_clear_line(tmp_path, shapes_data_dir):
  proc = _driver(["--task=rotation", "--preprocessing=resize,rotate", "--resize_size=32",
                  "--architecture=alexnet", f"--workdir={tmp_path}/wd"], shapes_data_dir)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode != 0
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: unknown architecture 'alexnet'; valid choices:"), err
  assert "Traceback" not in err


def test_sigkill_mid_training_then_resume(tmp_path, shapes_data_dir):
  workdir = tmp_path / "wd"
  args = ["--task=rotation", "--preprocessing=resize,-1_to_1,rotate", "--resize_size=32",
          "--architecture=vgg19", "--filters_factor=1", "--batch_size=8", "--lr_scale_batch_size=8",
          "--train_split=train[:200]", "--epochs=1", "--log_every_steps=1",
          "--save_checkpoints_steps=3", f"--workdir={workdir}"]
  proc = _driver(args, shapes_data_dir, start_new_session=True)
  state = workdir / "checkpoints" / "checkpoint"
  deadline = time.time() + 120
  while not state.exists() and time.time() < deadline and proc.poll() is None:
    time.sleep(0.05)
  assert state.exists(), proc.communicate()[1][-2000:]
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  saved_step = int(tf.train.latest_checkpoint(str(workdir / "checkpoints")).rsplit("-", 1)[1])
  assert 3 <= saved_step < 25
  proc = _driver(args, shapes_data_dir)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  restored = [l for l in out.splitlines() if l.startswith("restored")]
  assert restored and restored[0].endswith(f"at step {saved_step}"), out
  first_step = int(next(l for l in out.splitlines() if l.startswith("step ")).split()[1].split(
      "/")[0])
  assert first_step > saved_step  # The step count continues.
  assert "step 25/25" in out
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("-25")
  assert export_lib.load_export_info(str(workdir / "export"))["step"] == 25


_RUN = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    if os.environ.get("LOGICAL_CPUS"):
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["LOGICAL_CPUS"]))
    from training import trainer as trainer_lib
    from core.config import Config
    import train_and_eval
    made = []
    class Recording(trainer_lib.Trainer):
      def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made.append(self)
    trainer_lib.Trainer = Recording
    config = Config(**json.loads(sys.argv[1]))
    lines = []
    results = train_and_eval.run(config, print_fn=lines.append)
    weights = [float(tf.reduce_sum(tf.cast(v, tf.float64))) for v in made[0].model.variables]
    print(json.dumps({"lines": lines, "step": results["step"], "weights": weights}))
    """)


def _run_in_subprocess(config, env=None, **kwargs):
  return subprocess.Popen([sys.executable, "-c", _RUN, json.dumps(config.to_dict())],
                          cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=dict(os.environ, **(env or {})), **kwargs)


def _result(proc, timeout=300):
  out, err = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, err[-3000:]
  return json.loads(out.strip().splitlines()[-1])


def _step_losses(lines):
  return [float(l.split(" loss ")[1].split()[0]) for l in lines if l.startswith("step ")]


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path, shapes_data_dir):
  """Two replicas at the same global batch follow the one-device run: the union of the replicas'
  batches is the one-device batch, batch norm is synchronised and the gradients are summed."""
  # lr 0.01: at the default 0.1, SGD on 8 images amplifies rounding differences within steps.
  config = small_config(tmp_path / "one", shapes_data_dir, epochs=2, run_eval=True, lr=0.01)
  mirrored = dataclasses.replace(config, workdir=str(tmp_path / "two"), strategy="mirrored")
  one = _result(_run_in_subprocess(config))
  two = _result(_run_in_subprocess(mirrored, env={"LOGICAL_CPUS": "2"}))
  assert one["step"] == two["step"] == 4
  assert any("2 replica(s)" in l for l in two["lines"])
  eval_line = next(l for l in two["lines"] if l.startswith("evaluated"))
  assert "num_examples 128" in eval_line
  # Within 0.01: summation order differs across replicas, and the drift grows step by step
  # (0.003 at step 4 when measured; the first two steps agree to 1e-4).
  losses_one, losses_two = _step_losses(one["lines"]), _step_losses(two["lines"])
  np.testing.assert_allclose(losses_two[:2], losses_one[:2], atol=1e-3)
  np.testing.assert_allclose(losses_two, losses_one, atol=1e-2)


def _free_ports(n):
  import socket  # pylint: disable=g-import-not-at-top
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def test_multi_worker_strategy_with_two_local_workers(tmp_path, shapes_data_dir):
  """Two worker processes on localhost train together and end with the same weights; only the
  chief (worker 0) leaves files, and the shared workdir holds one run."""
  config = small_config(tmp_path / "wd", shapes_data_dir, epochs=2, strategy="multi_worker",
                        run_eval=True, save_checkpoints_steps=2)
  cluster = {"worker": [f"localhost:{p}" for p in _free_ports(2)]}
  procs = [_run_in_subprocess(config, env={"TF_CONFIG": json.dumps(
      {"cluster": cluster, "task": {"type": "worker", "index": i}})}) for i in range(2)]
  chief, other = [_result(p) for p in procs]
  assert chief["step"] == other["step"] == 4
  assert any("2 replica(s)" in l for l in chief["lines"])
  np.testing.assert_allclose(other["weights"], chief["weights"], rtol=1e-6, atol=1e-6)
  assert _step_losses(other["lines"]) == _step_losses(chief["lines"])
  assert sorted(os.listdir(config.workdir)) == ["checkpoints", "config.json", "export",
                                               "pretext_results.json", "train"]
  assert tf.train.latest_checkpoint(config.checkpoint_dir).endswith("-4")
  assert export_lib.load_export_info(config.export_dir)["step"] == 4


@pytest.mark.parametrize("overrides", [dict(precision="mixed_float16"),
                                       dict(precision="mixed_bfloat16"),
                                       dict(jit_compile=True)],
                         ids=["mixed_float16", "mixed_bfloat16", "jit_compile"])
def test_accelerator_options_train_like_float32(tmp_path, shapes_data_dir, overrides):
  """A few steps with each accelerator option: finite losses close to the float32 run's, and
  every kernel updated as the float32 run updates it."""

  def losses(config):
    lines = []
    train_and_eval.run(config, print_fn=lines.append)
    return _step_losses(lines)

  # Both runs keep their first and last checkpoints (the model alone): the same initial
  # weights, then each run's final ones.
  base = small_config(tmp_path / "f32", shapes_data_dir, epochs=2, run_eval=False, lr=0.01,
                      eval_at_steps=(0,))
  reference = losses(base)
  config = dataclasses.replace(base, workdir=str(tmp_path / "opt"), **overrides)
  got = losses(config)

  def kernels(workdir):
    """{variable: (first, last)} of every kernel in the kept checkpoints of `workdir`."""
    paths = tf.train.get_checkpoint_state(
        os.path.join(workdir, files.KEPT_CHECKPOINTS_DIR)).all_model_checkpoint_paths
    readers = [tf.train.load_checkpoint(p) for p in (paths[0], paths[-1])]
    return {name: tuple(r.get_tensor(name) for r in readers)
            for name, _ in tf.train.list_variables(paths[0])
            if name.startswith("model/") and "kernel/.ATTRIBUTES" in name}

  initial = {k: first for k, (first, _) in kernels(base.workdir).items()}
  moved = {run: {k: last - initial[k] for k, (_, last) in kernels(c.workdir).items()}
           for run, c in (("f32", base), ("opt", config))}
  assert set(moved["opt"]) == set(moved["f32"]) == set(initial) and len(initial) > 10
  # Every kernel moved about as far as the float32 run's, in a like direction. A loss scale that
  # skipped the updates (or an option that froze a layer) leaves a kernel where it was: ratio 0.
  # Measured over the 4 steps: norm ratios 0.96-1.16; cosines 0.91-0.99 (XLA), 0.76-0.96
  # (float16), 0.42-0.90 (bfloat16's 8-bit mantissa).
  min_cosine = 0.3 if "precision" in overrides else 0.8
  for name, delta in moved["f32"].items():
    other = moved["opt"][name]
    cosine = np.sum(delta * other) / (np.linalg.norm(delta) * np.linalg.norm(other) + 1e-30)
    ratio = np.linalg.norm(other) / np.linalg.norm(delta)
    assert cosine > min_cosine and 0.8 < ratio < 1.25, (name, cosine, ratio)
  assert len(got) == len(reference) == 4
  assert np.all(np.isfinite(got))
  # The same trajectory: 16-bit compute rounds, XLA fuses (float32 throughout). Rounding
  # differences grow step by step on 8 images (XLA: 1e-4 at step 2, 0.008 at step 4 measured).
  tolerance = 0.05 if "precision" in overrides else 2e-3
  np.testing.assert_allclose(got[:2], reference[:2], atol=tolerance)
  np.testing.assert_allclose(got, reference, atol=max(tolerance, 0.02))
  assert tf.keras.mixed_precision.global_policy().name == "float32"  # Restored after the build.
  reloaded = tf.saved_model.load(config.export_dir)
  out = reloaded.signatures["representation"](images=tf.zeros([2, 32, 32, 3]))
  assert all(v.dtype == tf.float32 for v in out.values())
  info = json.load(open(os.path.join(config.workdir, "config.json")))
  assert info.get("precision", "float32") == config.precision


@pytest.mark.slow
def test_sigkill_at_random_moments_then_finish(tmp_path, shapes_data_dir):
  """Killed three times, each time as it reports a seeded random step (during training, just
  before that step's checkpoint is saved, and after the last step, in the final save or the
  export), the same command still finishes the planned steps with a readable checkpoint and
  export."""
  workdir = tmp_path / "wd"
  args = ["--task=rotation", "--preprocessing=resize,-1_to_1,rotate", "--resize_size=32",
          "--architecture=vgg19", "--filters_factor=1", "--batch_size=8", "--lr_scale_batch_size=8",
          "--train_split=train[:320]", "--epochs=1", "--log_every_steps=1",
          "--save_checkpoints_steps=2", f"--workdir={workdir}"]
  rng = np.random.default_rng(7)
  kill_steps = sorted(int(k) for k in rng.choice(np.arange(3, 38), size=2, replace=False))
  for kill_step in kill_steps + [40]:
    proc = _driver(args, shapes_data_dir, start_new_session=True)
    seen = []
    for line in proc.stdout:
      if line.startswith("step "):
        seen.append(int(line.split()[1].split("/")[0]))
        if seen[-1] >= kill_step:
          os.killpg(proc.pid, signal.SIGKILL)
          break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, (kill_step, seen, proc.stderr.read()[-2000:])
    assert seen[-1] == kill_step  # Killed at that step, not after the run ended by itself.
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    if latest:  # Whatever the moment, the checkpoint it names is complete.
      assert tf.train.load_checkpoint(latest).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") > 0
  proc = _driver(args, shapes_data_dir)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert tf.train.latest_checkpoint(str(workdir / "checkpoints")).endswith("-40")
  assert export_lib.load_export_info(str(workdir / "export"))["step"] == 40
  reloaded = tf.saved_model.load(str(workdir / "export"))
  assert reloaded.signatures["serving_default"](images=tf.zeros([1, 32, 32, 3]))["logits"].shape \
      == (1, 4)
  assert not [p for p in os.listdir(workdir) if p.startswith("export.")]  # No half exports left.


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, shapes_data_dir):
  from training.trainer import NonFiniteLossError  # pylint: disable=g-import-not-at-top
  # A rate that overflows the weights from the second epoch on (steps 3 to 6 of 2 per epoch).
  config = small_config(tmp_path / "wd", shapes_data_dir, save_checkpoints_steps=1, epochs=3,
                        decay_epochs=(1.0,), lr_decay_factor=1e38)
  with pytest.raises(NonFiniteLossError, match=r"non-finite loss between steps (\d+) and \1 .*"
                                               r"the last checkpoint .*ckpt-(\d+)\) is intact"):
    train_and_eval.run(config, print_fn=_quiet)
  latest = tf.train.latest_checkpoint(config.checkpoint_dir)
  step = int(latest.rsplit("-", 1)[1])
  assert 2 <= step < 6
  reader = tf.train.load_checkpoint(latest)
  assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == step
  assert not os.path.exists(config.export_dir)  # Nothing exported from a diverged run.


def test_deterministic_runs_give_the_same_losses_and_probes(tmp_path, shapes_data_dir):
  """--deterministic: two runs of the same command and seed, at the same time (as the grid's
  --jobs=2 runs cells), train with the same losses and give the same probe accuracies. The
  pipeline augments (random flips, rotations) in parallel map calls."""
  pretext = ["--task=rotation", "--preprocessing=resize,flip_lr,-1_to_1,rotate",
             "--resize_size=32", "--architecture=vgg19", "--filters_factor=1",
             "--batch_size=16", "--lr_scale_batch_size=16", "--optimizer=adam", "--lr=0.01",
             "--train_split=train[:96]", "--val_split=test[:32]", "--epochs=1",
             "--log_every_steps=1", "--shuffle_buffer=50", "--random_seed=7", "--deterministic"]
  procs = [_driver(pretext + [f"--workdir={tmp_path}/run{i}"], shapes_data_dir)
           for i in (0, 1)]
  losses = []
  for proc in procs:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    losses.append([l.split(" lr ")[0] for l in out.splitlines() if l.startswith("step ")])
  assert len(losses[0]) == 6 and losses[0] == losses[1], losses
  probe = ["--task=linear_eval", "--train_split=train[:96]", "--val_split=test[:64]",
           "--batch_size=32", "--lr_scale_batch_size=32", "--epochs=3", "--random_seed=7",
           "--deterministic"]
  procs = [_driver(probe + [f"--hub_module={tmp_path}/run{i}/export",
                            f"--workdir={tmp_path}/run{i}/linear_eval"], shapes_data_dir)
           for i in (0, 1)]
  layers = []
  for i, proc in enumerate(procs):
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    with open(os.path.join(tmp_path, f"run{i}", "linear_eval", "results.json")) as f:
      results = json.load(f)
    assert results["run"]["deterministic"] is True and results["run"]["random_seed"] == 7
    layers.append(results["layers"])
  assert layers[0] == layers[1]
