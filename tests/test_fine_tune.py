"""Semi-supervised fine-tuning: the backbone read from an export, the weights it changes (and the
export it leaves alone), the labelled subset, the random-init baseline, and a pretrained backbone
beating random init on a few labels."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from core import files
from core import interrupts
from core import options
from core.config import Config
from core.errors import ConfigError
from eval import fine_tune
from eval import linear_eval
from eval import representation as representation_lib
import train_and_eval

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "resize,-1_to_1"


@pytest.fixture(scope="module")
def supervised_export(tmp_path_factory):
  """A narrow ResNet-50 v2 trained with labels on 12,000 images of the full embedded set for one
  epoch (about a minute): 29% on 500 of its test images when measured, and rising (chance 10%).
  The fine-tuning tests then use shapes_small, images of the same kind that it has not seen: on
  the 1000 images of shapes_small alone, supervised training reaches only 15-25%."""
  data_dir = str(tmp_path_factory.mktemp("tfds_full"))
  workdir = tmp_path_factory.mktemp("supervised")
  config = Config(task="supervised", workdir=str(workdir), dataset="shapes", data_dir=data_dir,
                  architecture="resnet50", filters_factor=1, zero_init_residual=True,
                  preprocessing="resize,flip_lr,-1_to_1", resize_size=(32, 32), batch_size=64,
                  eval_batch_size=250, optimizer="adam", lr=0.002, lr_scale_batch_size=64,
                  epochs=1, train_split="train[:12000]", val_split="test[:500]",
                  log_every_steps=50, save_checkpoints_secs=None, run_eval=True)
  results = train_and_eval.run(config, print_fn=lambda _: None)
  assert results["eval_metrics"]["accuracy"] > 0.2  # It learnt something of the classes.
  return results["export_dir"]


@pytest.fixture(scope="module")
def export(tmp_path_factory, shapes_data_dir):
  """An export for the tests of the fine-tuning mechanics (reading, resuming, signals, settings),
  which do not need a backbone that learnt much: a narrow ResNet-50 v2 after 2 supervised steps
  on shapes_small (seconds)."""
  workdir = tmp_path_factory.mktemp("export")
  config = Config(task="supervised", workdir=str(workdir), dataset="shapes_small",
                  data_dir=shapes_data_dir, architecture="resnet50", filters_factor=1,
                  preprocessing=SPEC, resize_size=(32, 32), batch_size=64, lr=0.01,
                  lr_scale_batch_size=64, epochs=1, train_split="train[:128]",
                  log_every_steps=50, save_checkpoints_secs=None, run_eval=False)
  return train_and_eval.run(config, print_fn=lambda _: None)["export_dir"]


def ft_config(workdir, data_dir, hub_module, **overrides):
  values = dict(task="fine_tune", workdir=str(workdir), dataset="shapes_small", data_dir=data_dir,
                hub_module=hub_module or options.RANDOM_INIT, architecture="resnet50", filters_factor=1, mode="v2",
                eval_preprocessing=SPEC, preprocessing=SPEC, batch_size=25,
                eval_batch_size=100, lr=0.01, backbone_lr=0.001, lr_scale_batch_size=25,
                epochs=10, examples_per_class=5, train_split="train", val_split="test",
                log_every_steps=1000, save_checkpoints_secs=600.0)
  values.update(overrides)
  flag_values = {o.name: o.default for o in options.OPTIONS.values()}
  flag_values.update(values)
  flag_values["resize_size"] = (32, 32)
  return fine_tune.config_from_values(flag_values)


def _hash(directory):
  digest = hashlib.sha256()
  for root, _, names in sorted(os.walk(directory)):
    for name in sorted(names):
      with open(os.path.join(root, name), "rb") as f:
        digest.update(name.encode() + f.read())
  return digest.hexdigest()


def _weights(model):
  return [v.numpy().copy() for v in model.variables]


def test_backbone_read_from_the_export_gives_the_exports_outputs(tmp_path, shapes_data_dir,
                                                                 export):
  config = ft_config(tmp_path, shapes_data_dir, os.path.dirname(export))
  backbone, info = fine_tune.load_backbone(config)  # A pretext workdir names its export.
  assert info["source"] == os.path.abspath(export)
  images = tf.random.uniform([4, 32, 32, 3], -1, 1, seed=1)
  exported = tf.saved_model.load(export).signatures["representation"](images=images)
  rebuilt = backbone(images, training=False)
  assert set(rebuilt) == set(exported) - {"logits"}
  for name, value in rebuilt.items():
    np.testing.assert_allclose(value.numpy(), exported[name].numpy(), rtol=1e-4, atol=1e-4,
                               err_msg=name)


def test_fine_tuning_changes_the_backbone_and_leaves_the_export_intact(
    tmp_path, shapes_data_dir, export):
  before = _hash(export)
  config = ft_config(tmp_path / "ft", shapes_data_dir, export, epochs=2)
  start, _ = fine_tune.load_backbone(config)
  outcome = fine_tune.fine_tune(config)
  changed = [np.abs(a - b).max() for a, b in zip(_weights(start), _weights(outcome.backbone))]
  assert min(c for c in changed) >= 0 and max(changed) > 1e-4
  # Every conv kernel moved, not only the last layers.
  kernels = [np.abs(a - b).max() for v, a, b in zip(start.variables, _weights(start),
                                                      _weights(outcome.backbone))
             if v.name == "kernel"]
  assert len(kernels) >= 16 and min(kernels) > 0
  assert _hash(export) == before
  # A frozen probe of the same export trains heads only: the export is the same afterwards.
  probe = linear_eval.LinearEvalConfig(
      workdir=str(tmp_path / "probe"), dataset="shapes_small", data_dir=shapes_data_dir,
      hub_module=export, train_split="train[:200]", val_split="test[:100]",
      batch_size=50, epochs=1, layers=("pre_logits",))
  linear_eval.run_linear_eval(probe)
  assert _hash(export) == before


def test_a_second_run_resumes_from_its_checkpoint_and_another_config_starts_afresh(
    tmp_path, shapes_data_dir, export):
  config = ft_config(tmp_path / "ft", shapes_data_dir, export, epochs=1)
  lines = []
  first = fine_tune.fine_tune(config, print_fn=lines.append)
  assert any(l.startswith("step 2/2") for l in lines) and not any("restored" in l for l in lines)
  lines.clear()
  again = fine_tune.fine_tune(config, print_fn=lines.append)  # Its checkpoint is at step 2.
  assert any(l.startswith("restored") and l.endswith("at step 2") for l in lines), lines
  assert not any(l.startswith("step ") for l in lines)
  assert again.results["layers"] == first.results["layers"]
  lines.clear()
  fine_tune.fine_tune(ft_config(tmp_path / "ft", shapes_data_dir, export, epochs=2,
                                random_seed=3), print_fn=lines.append)
  assert not any("restored" in l for l in lines) and any(l.startswith("step 4/4") for l in lines)


def test_a_signal_saves_the_fine_tuning_step_it_arrives_at(tmp_path, shapes_data_dir,
                                                         export):
  """SIGTERM at step 2 of 4 (sent by the progress line of step 2): the checkpoint of step 2 is
  saved and Interrupted raised, without results; the same config resumes from step 2."""
  config = ft_config(tmp_path / "ft", shapes_data_dir, export, epochs=2,
                     log_every_steps=1, val_split="test[:50]")
  lines = []

  def print_fn(line):
    lines.append(line)
    if line.startswith("step 2/"):
      os.kill(os.getpid(), signal.SIGTERM)

  with interrupts.StopOnSignal() as stop:
    with pytest.raises(interrupts.Interrupted, match=r"interrupted by SIGTERM at fine-tuning step "
                                                     r"2 of 4: saved .*ckpt-2$"):
      fine_tune.run_fine_tune(config, print_fn=print_fn, stop=stop)
  assert not os.path.exists(os.path.join(config.workdir, "results.json"))
  lines.clear()
  fine_tune.fine_tune(config, print_fn=lines.append)
  assert any(l.startswith("restored") and l.endswith("at step 2") for l in lines), lines
  assert [l.split()[1] for l in lines if l.startswith("step ")] == ["3/4", "4/4"]


def test_labelled_subset_is_fixed_class_balanced_seeded_and_all_that_trains(
    tmp_path, shapes_data_dir, export):
  config = ft_config(tmp_path, shapes_data_dir, export, examples_per_class=3)
  _, info = fine_tune.load_backbone(config)
  data = linear_eval.eval_data(config, info)
  indices = fine_tune.labelled_subset(config)
  batches = list(data.batches("train", is_training=False))
  labels = np.concatenate([b["label"].numpy() for b in batches])
  images = np.concatenate([b["image"].numpy() for b in batches])
  assert len(indices) == 30 and len(set(indices.tolist())) == 30
  np.testing.assert_array_equal(np.bincount(labels[indices], minlength=10), [3] * 10)
  np.testing.assert_array_equal(fine_tune.labelled_subset(config), indices)
  other = fine_tune.labelled_subset(ft_config(tmp_path, shapes_data_dir, export,
                                              examples_per_class=3, random_seed=1))
  assert set(other.tolist()) != set(indices.tolist())
  # Training reads those 30 images and no other (the spec has no random op here).
  wanted = {images[i].tobytes() for i in indices}
  seen = set()
  for batch, _ in zip(data.batches("train", is_training=True, indices=indices), range(6)):
    seen |= {image.tobytes() for image in batch["image"].numpy()}
  assert seen == wanted
  fraction = ft_config(tmp_path, shapes_data_dir, export, examples_per_class=None,
                       train_fraction=0.1)
  counts = np.bincount(labels, minlength=10)
  subset = fine_tune.labelled_subset(fraction)
  np.testing.assert_array_equal(np.bincount(labels[subset], minlength=10),
                                np.maximum(1, np.floor(0.1 * counts + 0.5)).astype(int))


def test_random_init_baseline_starts_from_random_weights(tmp_path, shapes_data_dir,
                                                         export):
  config = ft_config(tmp_path, shapes_data_dir, None)
  backbone, info = fine_tune.load_backbone(config)
  assert info["task"] == options.RANDOM_INIT
  # The per-layer evaluation's random-init baseline of the same seed, built as it builds it.
  fresh = representation_lib.random_init("resnet50", filters_factor=1, mode="v2", seed=0)
  images = tf.random.uniform([2, 32, 32, 3], -1, 1, seed=2)
  np.testing.assert_allclose(backbone(images)["pre_logits"].numpy(),
                             fresh(images)["pre_logits"].numpy(), rtol=1e-5, atol=1e-5)
  other, _ = fine_tune.load_backbone(ft_config(tmp_path, shapes_data_dir, None, random_seed=1))
  assert np.abs(other(images)["pre_logits"].numpy() -
                backbone(images)["pre_logits"].numpy()).max() > 1e-2
  trained, _ = fine_tune.load_backbone(ft_config(tmp_path, shapes_data_dir, export))
  assert np.abs(trained(images)["pre_logits"].numpy() -
                backbone(images)["pre_logits"].numpy()).max() > 1e-2


@pytest.mark.slow
def test_pretrained_backbone_beats_random_init_on_five_labels_per_class(
    tmp_path, shapes_data_dir, supervised_export):
  """The whole protocol through train_and_eval.py's evaluation: results.json of the fine_tune
  form; the pretrained backbone well ahead of the random-init one fine-tuned the same way."""
  results = {}
  for name, hub in (("pretrained", supervised_export), ("random_init", None)):
    config = ft_config(tmp_path / name, shapes_data_dir, hub)
    results[name] = fine_tune.run_fine_tune(config)
    assert not os.path.exists(config.checkpoint_dir)  # Removed once the results are written.
  pretrained, random = results["pretrained"], results["random_init"]
  assert pretrained["evaluation"] == "fine_tune"
  assert pretrained["layer_order"] == ["pre_logits"]
  assert pretrained["low_label"]["num_train_examples"] == 50
  assert pretrained["dataset"]["num_val_examples"] == 300
  top1 = {k: r["layers"]["pre_logits"]["top1"] for k, r in results.items()}
  assert top1["pretrained"] > top1["random_init"] + 0.05, top1
  assert random["source"]["task"] == options.RANDOM_INIT
  # Tied to the export it measured: reused only for that one (eval/results.skip_or_set_aside).
  assert pretrained["source"]["fingerprint"] == files.export_fingerprint(supervised_export)
  # The same config again: the results are reused, not recomputed.
  mtime = os.stat(tmp_path / "pretrained" / "results.json").st_mtime_ns
  fine_tune.run_fine_tune(ft_config(tmp_path / "pretrained", shapes_data_dir, supervised_export))
  assert os.stat(tmp_path / "pretrained" / "results.json").st_mtime_ns == mtime
  # Another config in the same workdir: fine-tuned anew, the earlier results moved aside whole.
  other = fine_tune.run_fine_tune(ft_config(tmp_path / "pretrained", shapes_data_dir,
                                            supervised_export, epochs=1, val_split="test[:50]"))
  assert other["config"]["epochs"] == 1 and other["dataset"]["num_val_examples"] == 50
  (aside,) = os.listdir(tmp_path / "pretrained" / "replaced")
  with open(tmp_path / "pretrained" / "replaced" / aside / "results.json") as f:
    assert json.load(f) == pretrained


def test_bad_settings_fail_with_one_line(tmp_path, shapes_data_dir, export):
  with pytest.raises(ConfigError, match="no export there"):
    fine_tune.load_backbone(ft_config(tmp_path, shapes_data_dir, str(tmp_path / "nothing")))
  with pytest.raises(ConfigError, match="at most one of train_fraction"):
    fine_tune.validate_config(ft_config(tmp_path, shapes_data_dir, export,
                                        train_fraction=0.1))
  with pytest.raises(ConfigError, match="--backbone_lr must be a positive number"):
    fine_tune.validate_config(ft_config(tmp_path, shapes_data_dir, export,
                                        backbone_lr=-1.0))
  proc = subprocess.run(
      [sys.executable, "train_and_eval.py", "--task=fine_tune", f"--workdir={tmp_path}/cli",
       f"--data_dir={shapes_data_dir}", "--dataset=shapes_small",
       f"--hub_module={tmp_path}/missing"], cwd=REPO_ROOT, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --hub_module=")


_FT_RUN = textwrap.dedent("""
    import json, os, sys
    from core import runtime
    runtime.set_defaults()
    import tensorflow as tf
    if os.environ.get("LOGICAL_CPUS"):
      cpu = tf.config.list_physical_devices("CPU")[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["LOGICAL_CPUS"]))
    from eval import fine_tune
    from tests.test_fine_tune import ft_config
    values = json.loads(sys.argv[1])
    config = ft_config(values.pop("workdir"), values.pop("data_dir"), None, **values)
    lines = []
    results = fine_tune.fine_tune(config, print_fn=lines.append).results
    print(json.dumps({"lines": lines, "layer": results["layers"]["pre_logits"],
                      "val": results["dataset"]["num_val_examples"]}))
    """)


def _fine_tune_in_subprocess(tmp_path, data_dir, name, env=None, **values):
  values = dict(values, workdir=str(tmp_path / name), data_dir=data_dir)
  proc = subprocess.run([sys.executable, "-c", _FT_RUN, json.dumps(values)], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, **(env or {})))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  out["losses"] = [float(l.split(" loss ")[1].split()[0]) for l in out["lines"]
                   if l.startswith("step ")]
  return out


@pytest.mark.slow
def test_fine_tuning_on_two_replicas_follows_one_and_runs_in_bfloat16(tmp_path, shapes_data_dir):
  """--strategy=mirrored on two logical CPUs at the same global batch: the same losses step by
  step as on one device (each replica half the batch, the gradients summed, batch norm
  synchronised) and the same test; --precision=mixed_bfloat16 trains and tests too."""
  settings = dict(batch_size=20, examples_per_class=4, epochs=2, log_every_steps=1,
                  val_split="test[:150]", eval_batch_size=40)
  one = _fine_tune_in_subprocess(tmp_path, shapes_data_dir, "one", **settings)
  two = _fine_tune_in_subprocess(tmp_path, shapes_data_dir, "two", env={"LOGICAL_CPUS": "2"},
                                 strategy="mirrored", **settings)
  assert any("2 replica(s)" in l for l in two["lines"])
  assert len(one["losses"]) == len(two["losses"]) == 4
  np.testing.assert_allclose(two["losses"], one["losses"], atol=1e-2)
  assert one["val"] == two["val"] == 150  # Every test image once, over both replicas.
  assert two["layer"]["top1"] == pytest.approx(one["layer"]["top1"], abs=0.02)
  half = _fine_tune_in_subprocess(tmp_path, shapes_data_dir, "bf16",
                                  precision="mixed_bfloat16", **settings)
  assert np.all(np.isfinite(half["losses"])) and half["val"] == 150
  np.testing.assert_allclose(half["losses"][0], one["losses"][0], atol=0.05)
  with pytest.raises(ConfigError, match="--precision=mixed_float16: fine-tuning runs in "
                                        "float32 or mixed_bfloat16"):
    fine_tune.validate_config(ft_config(tmp_path / "f16", shapes_data_dir, None,
                                        precision="mixed_float16"), check_data=False)
