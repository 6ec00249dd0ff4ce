"""Bad inputs not covered next to their parts (an empty split, a workdir that cannot be written,
a full disk while writing a result file) get a clear error and lose nothing written; result
files are readable like any other new file."""

import errno
import json
import os

import pytest

from core import files
from core.errors import ConfigError
import datasets
from tests.test_train_and_eval import small_config
import train_and_eval


def test_an_empty_split_is_named(shapes_data_dir):
  with pytest.raises(ValueError, match=r"dataset 'shapes_small' split 'train\[:0\]' has no "
                                       r"examples"):
    datasets.get_data("shapes_small", "train[:0]", is_training=True, preprocess_fn=None,
                      batch_size=4, data_dir=shapes_data_dir)


def test_a_split_smaller_than_the_batch_fails_before_training(tmp_path, shapes_data_dir):
  config = small_config(tmp_path / "wd", shapes_data_dir, train_split="train[:4]", batch_size=8)
  with pytest.raises(ValueError, match=r"--train_split='train\[:4\]' of shapes_small has 4 "
                                       r"examples, fewer than --batch_size=8"):
    train_and_eval.run(config, print_fn=lambda _: None)


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
