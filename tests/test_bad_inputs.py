"""Bad inputs not covered next to their parts (empty splits, a workdir that cannot be written, a
full disk while writing a result file, a split or an architecture an evaluation cannot use, one
class where labels are learnt, a schedule that does not fit the run) get one clear error before
any work and lose nothing written; result files are readable like any other new file."""

import dataclasses
import errno
import json
import os
import subprocess
import sys

import pytest

from core import files
from core.errors import ConfigError
import datasets
from tests.conftest import REPO_ROOT
from tests.test_train_and_eval import small_config
import train_and_eval


def test_an_empty_split_is_named(shapes_data_dir):
  with pytest.raises(ValueError, match=r"dataset 'shapes_small' split 'train\[:0\]' has no "
                                       r"examples"):
    datasets.get_data("shapes_small", "train[:0]", is_training=True, preprocess_fn=None,
                      batch_size=4, data_dir=shapes_data_dir)


def test_a_split_smaller_than_the_batch_fails_before_training(tmp_path, shapes_data_dir):
  config = small_config(tmp_path / "wd", shapes_data_dir, train_split="train[:4]", batch_size=8)
  with pytest.raises(ConfigError, match=r"--train_split='train\[:4\]' of shapes_small has 4 "
                                        r"examples; one training batch \(--batch_size=8\) needs "
                                        r"at least 8; splits of shapes_small: train \(1000 "
                                        r"examples\), test \(300 examples\)"):
    train_and_eval.run(config, print_fn=lambda _: None)
  assert not os.path.exists(tmp_path / "wd")


def test_a_workdir_that_cannot_be_created_is_one_clear_error(tmp_path, shapes_data_dir):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  config = small_config(blocker / "wd", shapes_data_dir)
  with pytest.raises(ConfigError, match=r"--workdir=.*a_file/wd is not writable"):
    train_and_eval.run(config, print_fn=lambda _: None)
  assert blocker.read_text() == "not a directory"


def test_a_full_disk_keeps_the_previous_results_file(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  files.write_json_atomic(str(path), {"top1": 0.5})

  def no_space(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, "fsync", no_space)
  with pytest.raises(OSError, match="No space left on device"):
    files.write_json_atomic(str(path), {"top1": 0.9})
  assert json.loads(path.read_text()) == {"top1": 0.5}
  assert os.listdir(tmp_path) == ["results.json"]  # No temporary file left behind.


def test_result_files_are_readable_like_any_new_file(tmp_path):
  path = tmp_path / "report.md"
  old = os.umask(0o022)
  try:
    files.write_text_atomic(str(path), "table")
  finally:
    os.umask(old)
  assert path.stat().st_mode & 0o777 == 0o644  # Not mkstemp's 0600.


def test_multi_worker_without_tf_config_is_one_clear_error(tmp_path, shapes_data_dir, monkeypatch):
  for name in ("TF_CONFIG", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):  # Nor under srun.
    monkeypatch.delenv(name, raising=False)
  config = small_config(tmp_path / "wd", shapes_data_dir, strategy="multi_worker")
  with pytest.raises(ConfigError, match="--strategy=multi_worker needs TF_CONFIG"):
    train_and_eval.run(config, print_fn=lambda _: None)
  assert not os.path.exists(tmp_path / "wd")


# ------------------------------------------------------------------ every error before the work
def _no_data_read(monkeypatch):
  """Makes reading any split an error: the checks must come first."""
  def read(*args, **kwargs):
    raise AssertionError(f"a split was read: {args} {kwargs}")
  monkeypatch.setattr(datasets, "get_data", read)


def _probe(tmp_path, data_dir, **overrides):
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  settings = dict(workdir=str(tmp_path / "probe"), dataset="shapes_small", data_dir=data_dir,
                  hub_module=None, architecture="vgg19", filters_factor=1,
                  eval_preprocessing="resize,-1_to_1", preprocess_params={"resize_size": (32, 32)},
                  train_split="train[:64]", val_split="test[:32]", batch_size=32, epochs=1)
  settings.update(overrides)
  return linear_eval.LinearEvalConfig(**settings)


@pytest.mark.parametrize("overrides, message", [
    (dict(val_split="validation"), r"^--val_split='validation': dataset 'shapes_small' has no "
     r"split 'validation'; splits of shapes_small: train \(1000 examples\), test \(300 "
     r"examples\)$"),
    (dict(train_split="train[:0]"), r"^--train_split='train\[:0\]' of shapes_small has no "
     r"examples; the evaluation needs at least 1"),
    (dict(architecture="vgg16"), r"^--architecture='vgg16' is not valid; choices: resnet50, "
     r"revnet50, vgg19, vit$"),
    (dict(hub_module="/no/such/export"), r"^--hub_module=/no/such/export: no such directory"),
    # An input known without the export (the baseline's), whose op lacks its parameter.
    (dict(eval_preprocessing="resize_small,central_crop,-1_to_1",
          preprocess_params={"crop_size": (24, 24)}),
     r"^eval_preprocessing='resize_small,central_crop,-1_to_1': preprocessing op 'resize_small' "
     r"needs smaller_size, which is not set"),
])
def test_evaluation_errors_come_before_any_split_is_read(tmp_path, shapes_data_dir, monkeypatch,
                                                         overrides, message):
  from eval import fine_tune, linear_eval  # pylint: disable=g-import-not-at-top
  _no_data_read(monkeypatch)
  config = _probe(tmp_path, shapes_data_dir, **overrides)
  with pytest.raises(ConfigError, match=message):
    linear_eval.run_linear_eval(config)
  ft = fine_tune.FineTuneConfig(**{k: v for k, v in config.to_dict().items()
                                   if k in fine_tune.FineTuneConfig.__dataclass_fields__})
  with pytest.raises(ConfigError, match=message):
    fine_tune.run_fine_tune(ft)
  assert not os.path.exists(config.workdir)


def _one_class_folder(root):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for split, count in (("train", 16), ("test", 8)):
    os.makedirs(root / split / "cats")
    for i in range(count):
      Image.fromarray(np.full((32, 32, 3), 8 * i, np.uint8)).save(root / split / "cats" / f"{i}.png")
  return f"folder:{root}"


def test_one_class_is_refused_where_labels_are_learnt_before_any_work(tmp_path, monkeypatch,
                                                                      shapes_data_dir):
  """A supervised run or a probe on one class would reach accuracy 1.0 and mean nothing; a
  self-supervised method needs no labels and runs."""
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  from training import validation  # pylint: disable=g-import-not-at-top
  dataset = _one_class_folder(tmp_path / "images")
  config = small_config(tmp_path / "wd", shapes_data_dir, dataset=dataset, task="supervised",
                        preprocessing="resize,-1_to_1", train_split="train", val_split="test")
  with pytest.raises(ConfigError, match=r"has 1 class \(cats\): --task=supervised trains on the "
                                        r"labels, which needs at least 2$"):
    train_and_eval.run(config, print_fn=lambda _: None)
  assert not os.path.exists(tmp_path / "wd")
  validation.validate(dataclasses.replace(config, task="rotation",
                                          preprocessing="resize,-1_to_1,rotate"))
  _no_data_read(monkeypatch)
  with pytest.raises(ConfigError, match=r"has 1 class \(cats\): a classifier of the classes, "
                                        r"which needs at least 2"):
    linear_eval.run_linear_eval(_probe(tmp_path, None, dataset=dataset, train_split="train",
                                       val_split="test"))


def test_empty_splits_are_refused_before_anything_is_written(tmp_path, shapes_data_dir):
  """An empty training split, or an empty test split with --run_eval (found before training, not
  after it with no export); the corrected command then runs in the same workdir."""
  workdir = tmp_path / "wd"
  for split, message in (
      (dict(train_split="train[:0]"), r"--train_split='train\[:0\]' of shapes_small has no "
       r"examples; one training batch \(--batch_size=8\) needs at least 8"),
      (dict(val_split="test[:0]", run_eval=True), r"--val_split='test\[:0\]' of shapes_small has "
       r"no examples; the pretext evaluation \(--run_eval\) needs at least 1")):
    with pytest.raises(ConfigError, match=message):
      train_and_eval.run(small_config(workdir, shapes_data_dir, **split), print_fn=lambda _: None)
    assert not os.path.exists(workdir)
  assert train_and_eval.run(small_config(workdir, shapes_data_dir),
                            print_fn=lambda _: None)["step"] == 2


def _cli(*args, timeout=120):
  return subprocess.run([sys.executable, "train_and_eval.py", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout)


def test_the_command_line_gives_one_line_and_scales_a_short_schedule(tmp_path, shapes_data_dir):
  """On the command line: an evaluation error is one line, exit status 1, no traceback; the
  flagfile's warm-up and decays follow an --epochs given over it (a smoke run), with a note; a
  decay after the end that the command itself gives is refused with the values to pass."""
  proc = _cli("--flagfile=configs/evaluation/shapes.flags", "--hub_module=random_init",
              "--architecture=vgg19", "--eval_preprocessing=resize,-1_to_1", "--resize_size=32",
              "--dataset=shapes_small", f"--data_dir={shapes_data_dir}",
              "--val_split=validation", f"--workdir={tmp_path}/probe")
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: --val_split='validation': dataset 'shapes_small' has no split 'validation'")
  assert not os.path.exists(tmp_path / "probe")
  train = ("--flagfile=configs/rotation/shapes.flags", "--dataset=shapes_small",
           f"--data_dir={shapes_data_dir}", f"--workdir={tmp_path}/rot", "--check_only")
  proc = _cli(*train, "--epochs=0.02")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == [
      "note: --epochs=0.02 over the flagfile's 2: --warmup_epochs 0.1 -> 0.001 and "
      "--decay_epochs 1.6 -> 0.016, scaled with it (set them to choose your own)",
      "checked: --task=rotation would start"]
  proc = _cli(*train, "--epochs=0.02", "--decay_epochs=0.01,0.03", "--warmup_epochs=0")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --decay_epochs=0.01,0.03: 0.03 at or after the end of the run (--epochs=0.02) "
      "would never act; pass decays below 0.02 (--decay_epochs=0.01)")
  assert not os.path.exists(tmp_path / "rot")


def test_patches_smaller_than_an_architecture_takes_are_refused_before_any_work(
    tmp_path, shapes_data_dir):
  """VGG19's five 2x poolings need 32x32: jigsaw's 16x16 patches of 32x32 images, and DINO's
  16x16 local views, are refused with the sizes and the architectures that take them; rotation's
  whole images are not."""
  common = ("--architecture=vgg19", "--dataset=shapes_small", f"--data_dir={shapes_data_dir}",
            "--val_split=test", f"--workdir={tmp_path}/wd", "--check_only")
  proc = _cli("--flagfile=configs/jigsaw/shapes.flags", *common)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --architecture=vgg19 needs inputs of at least 32x32; --task=jigsaw with "
      "--preprocessing='to_gray,crop,crop_patches,standardization' gives its backbone 16x16: "
      "make the images, patches or views larger (e.g. --resize_size, --crop_size) or use "
      "resnet50, revnet50, vit")
  proc = _cli("--flagfile=configs/jigsaw/shapes.flags", *common[:-1])  # A run, not a check.
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "gives its backbone 16x16" in proc.stderr.strip().splitlines()[-1]
  proc = _cli("--flagfile=configs/dino/shapes.flags", *common)  # Its 16x16 local views.
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].endswith(
      "gives its backbone 16x16: make the images, patches or views larger (e.g. "
      "--local_crop_size) or use resnet50, revnet50, vit")
  proc = _cli("--flagfile=configs/rotation/shapes.flags", *common)
  assert proc.returncode == 0, proc.stderr
  assert not os.path.exists(tmp_path / "wd")


def test_an_export_fed_images_of_another_size_is_refused_before_extraction(tmp_path,
                                                                           shapes_data_dir):
  """An export whose signature fixes its input size (here 8x8) and an evaluation
  preprocessing that makes other images: one line before any image is read (not a TypeError at
  the first batch); patches of its size pass, each patch going in alone."""
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  from tests.test_eval_linear_eval import save_export  # pylint: disable=g-import-not-at-top
  config = _probe(tmp_path, shapes_data_dir, hub_module=save_export(tmp_path / "export"),
                  architecture=None, preprocess_params={"resize_size": (16, 16)})
  with pytest.raises(ConfigError, match=r"takes images of 8x8x3 \(its export's input\), but the "
                                        r"evaluation preprocessing 'resize,-1_to_1' makes "
                                        r"16x16x3; set --eval_preprocessing"):
    linear_eval.run_linear_eval(config)
  assert not os.path.exists(config.workdir)
  patches = dataclasses.replace(config, eval_preprocessing="resize,crop_patches,-1_to_1",
                                preprocess_params={"resize_size": (16, 16), "splits_per_side": 2})
  rep = linear_eval.load_representation(patches)
  # A patch method's export on whole images: the message says how to probe it on patches.
  rep.info["eval_preprocessing"] = "resize,crop,crop_patches,standardization"
  with pytest.raises(ConfigError, match=r"makes 16x16x3; its export takes patches \(trained on "
                                        r"'resize,crop,crop_patches,standardization'\): probe it "
                                        r"on patches .* cut 8x8x3 patches \(on ImageNet: "
                                        r"--flagfile=configs/evaluation/imagenet_patches.flags"):
    linear_eval.check_input(rep, linear_eval.eval_data(config, rep.info), config.val_split)
  linear_eval.check_input(rep, linear_eval.eval_data(patches, rep.info), patches.val_split)
