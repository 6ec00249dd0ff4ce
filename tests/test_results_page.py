"""docs/results.md is written from result files alone: the page in the repository is what its
generator writes from docs/results/, and a section added from a grid root quotes that root's
numbers and run records and copies nothing but result files."""

import json
import os
import subprocess
import sys

import pytest

from report import results_page
from tests.conftest import REPO_ROOT
from tests.test_report import RESNET, _run_record, resnet_values, write_cell

DOCS = os.path.join(REPO_ROOT, "docs")


def test_the_results_page_is_what_its_result_files_give():
  """Every number on docs/results.md comes from docs/results/: regenerating changes nothing."""
  proc = subprocess.run([sys.executable, "scripts/write_results.py", "--check"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert os.listdir(os.path.join(DOCS, "results"))  # It quotes runs, and it holds their files.


def test_a_section_added_from_a_root_quotes_its_numbers_and_how_they_were_made(tmp_path):
  root = str(tmp_path / "grid")
  run = _run_record()
  run["devices"] = dict(run["devices"], cpu_simd=["avx2"])  # An AVX2 machine, not AVX-512.
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(3), pretext_acc=0.9, run=run)
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1), run=run)
  os.makedirs(os.path.join(root, "rotation-resnet50_v2-w1", "export"))
  with open(os.path.join(root, "rotation-resnet50_v2-w1", "export", "saved_model.pb"), "w") as f:
    f.write("not a result")
  os.makedirs(os.path.join(root, "cka_rot"))
  with open(os.path.join(root, "cka_rot", "cka.json"), "w") as f:
    json.dump({"a": {"task": "rotation", "architecture": "resnet50", "mode": "v2",
                     "filters_factor": 1, "hub_module": "x/rot/export"},
               "b": {"task": "random_init", "architecture": "resnet50", "mode": "v2",
                     "filters_factor": 1, "hub_module": "random_init"},
               "layers_a": ["block1", "block2"], "layers_b": ["block1", "block2"],
               "matrix": [[0.912, 0.3], [0.25, 0.5]], "dataset": {"name": "shapes",
                                                                 "split": "test[:64]"},
               "num_examples": 64, "num_batches": 2, "batch_size": 32}, f)
  results_dir, page = tmp_path / "docs" / "results", str(tmp_path / "docs" / "results.md")
  copied = results_page.add_section(root, str(results_dir / "demo"), "Rotation", "make demo",
                                    "What it shows.", order=5)
  assert sorted(os.path.relpath(p, results_dir / "demo") for p in copied) == [
      "cka_rot/cka.json",
      "random_init-resnet50_v2-w1/cell.json",
      "random_init-resnet50_v2-w1/linear_eval/results.json",
      "rotation-resnet50_v2-w1/cell.json",
      "rotation-resnet50_v2-w1/linear_eval/results.json",
      "rotation-resnet50_v2-w1/pretext_results.json"]
  text = results_page.render(str(results_dir), page)
  rotation = next(line for line in text.splitlines() if line.startswith("| rotation-"))
  cells = [c.strip() for c in rotation.strip("|").split("|")]
  # Its layers' top-1 as results.json has them (block3 the best, in bold), 90% pretext, and
  # the gain over the baseline: 0.5 at block3 against 0.3 at block1.
  values = resnet_values(3)
  assert cells[5:5 + len(RESNET)] == [
      f"**{100 * v:.1f}**" if n == "block3" else f"{100 * v:.1f}"
      for n, v in zip(RESNET, values.values())]
  assert cells[4] == "90.0%" and "+20.0" in cells
  assert "## Rotation" in text and "What it shows." in text and "`make demo`" in text
  # The layer similarity's table, under the section's heading.
  assert "### Layer similarity (linear CKA)" in text and "#### cka_rot" in text
  assert "| block1 | 0.91 | 0.30 |\n| block2 | 0.25 | 0.50 |" in text
  assert ("- commit 0123456789+dirty, python 3.11.7, tensorflow 2.21.0, keras 3.15.1, "
          "tensorflow_datasets 4.9.10, numpy 2.4.6, CPU: AMD EPYC, 2 cores (avx2): "
          "rotation-resnet50_v2-w1 (pretext), rotation-resnet50_v2-w1 (linear_eval), "
          "random_init-resnet50_v2-w1 (linear_eval)") in text
  # A folder holding anything but result files is not replaced; a root without results refused.
  with open(results_dir / "demo" / "notes.txt", "w") as f:
    f.write("mine")
  with pytest.raises(ValueError, match="notes.txt, which is not a result file"):
    results_page.add_section(root, str(results_dir / "demo"), "Rotation", "make demo")
  assert open(results_dir / "demo" / "notes.txt").read() == "mine"
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="no results.json under it"):
    results_page.add_section(str(tmp_path / "empty"), str(results_dir / "x"), "X", "y")
  assert not os.path.exists(results_dir / "x")


def test_a_bench_output_makes_a_performance_section(tmp_path):
  """A bench's --json_out (results_page.write_bench_output): its tables go on the performance
  page as they were measured, with the machine that measured them (its CPU's vector extensions:
  AVX2 or AVX-512)."""
  run = _run_record()
  run["devices"] = dict(run["devices"], cpu_simd=["avx2", "avx512f"])
  run["finished"] = "2026-12-05T09:00:00+00:00"
  output = tmp_path / "throughput.json"
  table = results_page.bench_table(
      "Training step, 32x32, batch 64 (images/s)", ("model", "images/s", "vs keras"),
      [("resnet50_v2 w4", 367.6, "1.39x"), ("keras ResNet50V2", 263.6, "")],
      ["ResNet-50 v2 at standard width vs Keras: 1.39x"])
  results_page.write_bench_output(str(output), "bench/throughput.py", [table], run)
  # A table names an export by its run, not by the folder it was measured in.
  assert results_page.export_label("/any/where/rotation_shapes/export/") == (
      "the export of rotation_shapes")
  assert results_page.export_label("some/model.keras") == "some/model.keras"
  # What the bench prints: the same cells, aligned (the first column left, the others right).
  assert results_page.bench_table_text(table).splitlines() == [
      "Training step, 32x32, batch 64 (images/s):",
      "model             images/s  vs keras",
      "resnet50_v2 w4       367.6     1.39x",
      "keras ResNet50V2     263.6",
      "ResNet-50 v2 at standard width vs Keras: 1.39x"]
  sections = tmp_path / "docs" / "performance"
  copied = results_page.add_section(str(output), str(sections / "cpu"), "Steps", "bench")
  assert [os.path.basename(p) for p in copied] == ["bench.json"]
  text = results_page.render(str(sections), str(tmp_path / "docs" / "performance.md"),
                             "performance")
  assert text.startswith("# Performance\n")
  assert ("| model | images/s | vs keras |\n|:--|--:|--:|\n| resnet50_v2 w4 | 367.6 | 1.39x |\n"
          "| keras ResNet50V2 | 263.6 |  |\n") in text
  assert "- ResNet-50 v2 at standard width vs Keras: 1.39x" in text
  assert "CPU: AMD EPYC, 2 cores (avx2, avx512f), 2026-12-05." in text
  with open(tmp_path / "other.json", "w") as f:
    json.dump({"rows": []}, f)
  with pytest.raises(ValueError, match="not a bench output"):
    results_page.add_section(str(tmp_path / "other.json"), str(sections / "x"), "X", "y")
