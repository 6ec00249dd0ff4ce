"""The feature store on disk: its rows as written, and probes trained from it under a real memory
limit (bench/probe_store.py at small sizes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from eval import store as store_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_rows_read_back_as_written_whatever_their_order(tmp_path):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(300, 7)).astype(np.float16)
  labels = rng.integers(0, 5, 300).astype(np.int32)
  writer = store_lib.Writer(str(tmp_path / "s"), {"k": 1}, "float16", 300)
  for start in range(0, 300, 64):
    writer.write({"a": table[start:start + 64]}, labels[start:start + 64])
  store = writer.finish()
  assert store.num_examples == 300 and store.dims == {"a": 7} and store.dtype == np.float16
  np.testing.assert_array_equal(store.labels, labels)
  for rows in (slice(0, 300), slice(17, 18), np.array([5, 6, 7, 100, 3, 299, 0]),
               rng.permutation(300)[:50]):
    np.testing.assert_array_equal(store.read("a", rows), table[rows])
  with pytest.raises(IndexError):
    store.read("a", np.array([300]))
  # Another key's unfinished store in the same folder is not gone on from: it starts anew.
  again = store_lib.Writer(str(tmp_path / "s"), {"k": 2}, "float16", 300)
  assert again.rows == 0


def test_probes_train_from_a_store_larger_than_the_memory_they_may_use():
  """720 MB of features (2 layers of 1000 features, 360 MB each) on disk; the heads, of
  decorrelated features, train and test in a process whose data segment is limited to its
  start + 0.2 GiB budget + 0.1 GiB (the runtime's own growth: traces, threads): a whole layer
  does not fit under the limit (checked), the run does, its resident memory grows by less than
  those 0.3 GiB, and the heads learn the classes."""
  proc = subprocess.run(
      [sys.executable, "bench/probe_store.py", "--examples=180000", "--features=2000",
       "--layers=2", "--classes=10", "--budget_gb=0.2", "--slack_gb=0.1",
       "--test_examples=2000", "--no_memory", "--json"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  disk = json.loads(proc.stdout.splitlines()[-1])["disk"]
  assert disk["store_gb"] == pytest.approx(0.72)
  assert disk["limit_bites"] is True
  assert disk["peak_rss_gb"] - disk["start_rss_gb"] < 0.2 + 0.1, disk
  assert disk["top1"] > 0.9, disk
