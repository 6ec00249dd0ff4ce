"""The report: tables in depth order, best layer, CSV/JSON, plots, several roots merged."""

import csv
import json
import os
import subprocess
import sys
import time

import pytest

import report as report_lib
from report import tables as report_tables
from tests.conftest import REPO_ROOT

RESNET = ["after_root", "block1", "block2", "block3", "block4", "pre_logits"]
VGG = ["block1", "block2", "block3", "block4", "block5", "fc6", "pre_logits"]


def write_cell(root, name, kind, method, arch, width, top1, order=None, pretext_acc=None,
               mode="v2", wall_s=100.0, with_state=True, dataset="shapes",
               evaluation="linear_eval", eval_spec="resize,-1_to_1", task="linear_eval",
               low_label=None, run=None, baseline=None, pretext_metrics=None,
               pretext_metric=None):
  """A cell directory as the runner leaves it: cell.json, pretext_results.json and
  <evaluation>/results.json (without cell.json: results.json in the directory itself)."""
  directory = os.path.join(root, name)
  results_dir = os.path.join(directory, evaluation) if with_state else directory
  os.makedirs(results_dir, exist_ok=True)
  order = order or list(top1)
  best = max(order, key=lambda n: (top1[n], -order.index(n)))
  results = {
      "format_version": 1,
      "evaluation": task,
      "config": {"dataset": dataset, "epochs": 10.0, "eval_model": "linear",
                 "on_the_fly": False, "hub_module": None if kind == "random_init" else "x"},
      "source": {"hub_module": "random_init" if kind == "random_init" else f"{directory}/export",
                 "task": "random_init" if kind == "random_init" else method,
                 "architecture": arch, "filters_factor": width, "mode": mode,
                 "eval_preprocessing": eval_spec},
      "dataset": {"name": dataset, "train_split": "train", "val_split": "test",
                  "num_classes": 10},
      "low_label": low_label,
      "layer_order": order,
      "layers": {n: {"dim": 64, "top1": v, "top5": min(1.0, v + 0.3), "loss": 1.5}
                 for n, v in top1.items()},
      "best_layer": {"name": best, "top1": top1[best]},
      "times": {"total_s": 12.0},
      "run": run,
  }
  with open(os.path.join(results_dir, "results.json"), "w") as f:
    json.dump(results, f)
  if pretext_acc is not None or pretext_metrics:
    pretext = {"config": {"task": method, "epochs": 3.0},
               "metrics": pretext_metrics or {"accuracy": pretext_acc},
               "run": run, "times": {"training_s": 600.0, "total_s": 700.0}}
    if pretext_metric:
      pretext["pretext_metric"] = pretext_metric
    with open(os.path.join(directory, "pretext_results.json"), "w") as f:
      json.dump(pretext, f)
  if with_state:
    state = {"name": name, "kind": kind, "method": method, "architecture": arch,
             "mode": mode if arch == "resnet50" else None, "width": width, "wall_s": wall_s,
             "evaluations": {evaluation: {"task": task, "dataset": dataset,
                                          "epochs": "10"}}}
    if baseline:
      state["baseline"] = baseline
    if kind != "random_init":
      state["pretext_flags"] = {"task": method, "architecture": arch,
                                "filters_factor": str(width), "epochs": "3", "run_eval": True}
    with open(os.path.join(directory, "cell.json"), "w") as f:
      json.dump(state, f)
  return directory


def resnet_values(peak, base=0.3):
  return {n: round(base + (0.2 if i == peak else 0.02 * i), 4) for i, n in enumerate(RESNET)}


@pytest.fixture
def root(tmp_path):
  root = str(tmp_path / "root_a")
  # Layer order deliberately scrambled in results.json: the report orders by depth.
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(3), order=list(reversed(RESNET)), pretext_acc=0.9, wall_s=754)
  write_cell(root, "supervised-resnet50_v2-w1", "supervised", "supervised", "resnet50", 1,
             resnet_values(5, 0.5), pretext_acc=0.95)
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1))
  write_cell(root, "rotation-vgg19-w1", "pretext", "rotation", "vgg19", 1,
             {n: 0.2 + 0.01 * i + (0.3 if n == "block4" else 0) for i, n in enumerate(VGG)},
             pretext_acc=0.8, mode=None)
  os.makedirs(os.path.join(root, "jigsaw-resnet50_v2-w1"))  # Failed: no results.
  with open(os.path.join(root, "grid_status.json"), "w") as f:
    json.dump({"cells": {
        "jigsaw-resnet50_v2-w1": {"status": "failed", "failed_step": "pretext", "exit_code": 1,
                                  "error": "error: unknown task 'jigsaw'", "log": "x/log.txt"},
        "rotation-vgg19-w1": {"status": "done"}}}, f)
  return root


def test_patch_methods_are_compared_with_the_baseline_on_patches(tmp_path):
  root = str(tmp_path / "root")
  patches = "to_gray,crop,crop_patches,standardization"
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(3, 0.3), pretext_acc=0.9)
  write_cell(root, "jigsaw-resnet50_v2-w1", "pretext", "jigsaw", "resnet50", 1,
             resnet_values(2, 0.1), pretext_acc=0.1, eval_spec=patches)
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1))
  write_cell(root, "random_init-resnet50_v2-w1-patches", "random_init", "random_init",
             "resnet50", 1, resnet_values(1, 0.05), eval_spec=patches)
  write_cell(root, "rotation-resnet50_v2-w2", "pretext", "rotation", "resnet50", 2,
             resnet_values(3, 0.3), pretext_acc=0.9)
  cells, _ = report_lib.load_cells([root])
  by_name = {c.name: c for c in cells}
  assert by_name["jigsaw-resnet50_v2-w1"].on_patches
  assert not by_name["rotation-resnet50_v2-w1"].on_patches
  gains = {c.name: report_lib.best_over_baseline(c, cells) for c in cells}
  assert gains["rotation-resnet50_v2-w1"] == pytest.approx(0.5 - 0.3)   # Whole-image baseline.
  assert gains["jigsaw-resnet50_v2-w1"] == pytest.approx(0.3 - 0.25)    # The one on patches.
  assert gains["rotation-resnet50_v2-w2"] is None                       # No width-2 baseline.
  assert gains["random_init-resnet50_v2-w1-patches"] is None


def test_each_cell_is_compared_with_the_baseline_on_its_own_input(tmp_path):
  """The grid's pairing (cell.json's baseline) decides; without it, the same recorded spec;
  a baseline on another input is still shown, flagged as such."""
  root = str(tmp_path / "root")
  standardised = "resize,standardization"
  write_cell(root, "exemplar-resnet50_v2-w1", "pretext", "exemplar", "resnet50", 1,
             resnet_values(0, 0.2), pretext_acc=0.1, eval_spec=standardised,
             baseline="random_init-resnet50_v2-w1-input2")
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(3, 0.3), pretext_acc=0.9, eval_spec="resize,flip_lr,-1_to_1",
             baseline="random_init-resnet50_v2-w1")
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(0, 0.25), eval_spec="resize,flip_lr,-1_to_1")
  write_cell(root, "random_init-resnet50_v2-w1-input2", "random_init", "random_init",
             "resnet50", 1, resnet_values(0, 0.1), eval_spec=standardised)
  cells, _ = report_lib.load_cells([root])
  by_name = {c.name: c for c in cells}
  gains = {c.name: report_lib.best_over_baseline(c, cells) for c in cells}
  assert gains["exemplar-resnet50_v2-w1"] == pytest.approx(0.4 - 0.3)  # Not 0.4 - 0.45.
  assert gains["rotation-resnet50_v2-w1"] == pytest.approx(0.5 - 0.45)
  md = open(report_lib.make_report([root])[0]["markdown"]).read()
  assert "| +10.0 | random_init-resnet50_v2-w1-input2 |" in md
  # A baseline of that name on another input (another root's, say) is flagged.
  by_name["random_init-resnet50_v2-w1-input2"].results["source"]["eval_preprocessing"] = "x"
  assert report_tables.baseline_label(by_name["exemplar-resnet50_v2-w1"], cells) == (
      "random_init-resnet50_v2-w1-input2 (other input)")
  by_name["random_init-resnet50_v2-w1-input2"].results["source"]["eval_preprocessing"] = (
      standardised)
  # Results without the grid's pairing (a root written before it, or runs outside a grid).
  for name in ("exemplar-resnet50_v2-w1", "rotation-resnet50_v2-w1"):
    del by_name[name].state["baseline"]
  exemplar = by_name["exemplar-resnet50_v2-w1"]
  assert report_tables.baseline_of(exemplar, cells).name == (
      "random_init-resnet50_v2-w1-input2")  # The same spec.
  cells = [c for c in cells if c.name != "random_init-resnet50_v2-w1-input2"]
  assert report_tables.baseline_label(exemplar, cells) == (
      "random_init-resnet50_v2-w1 (other input)")


def test_a_baseline_alike_to_the_cached_probes_is_not_flagged(tmp_path):
  """The grid pairs 'resize,-1_to_1' with a baseline on 'resize,flip_lr,-1_to_1' for the cached
  probes (the deterministic pass does not flip); on the fly the inputs differ."""
  root = str(tmp_path / "root")
  write_cell(root, "simclr-resnet50_v2-w1", "pretext", "simclr", "resnet50", 1,
             resnet_values(3, 0.3), pretext_acc=0.5, eval_spec="resize,-1_to_1",
             baseline="random_init-resnet50_v2-w1")
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(0, 0.25), eval_spec="resize,flip_lr,-1_to_1")
  cells, _ = report_lib.load_cells([root])
  simclr = next(c for c in cells if c.kind != "random_init")
  assert report_tables.baseline_label(simclr, cells) == "random_init-resnet50_v2-w1"
  simclr.results["source"]["eval_preprocessing"] = "resize,standardization"
  assert report_tables.baseline_label(simclr, cells) == (
      "random_init-resnet50_v2-w1 (other input)")
  simclr.results["source"]["eval_preprocessing"] = "resize,-1_to_1"
  simclr.results["config"]["on_the_fly"] = True
  assert report_tables.baseline_label(simclr, cells) == (
      "random_init-resnet50_v2-w1 (other input)")


def test_report_tables_best_layer_csv_json_and_plots(root, tmp_path):
  paths, summary = report_lib.make_report([root])
  assert paths["markdown"] == os.path.join(root, "report", "report.md")
  md = open(paths["markdown"]).read()
  # One table per family, columns in depth order.
  resnet_header = ("| cell | method | architecture | width | pretext | after_root | block1 | "
                   "block2 | block3 | block4 | pre_logits | best layer | vs random init | "
                   "compared with | wall time |")
  vgg_header = ("| cell | method | architecture | width | pretext | block1 | block2 | "
                "block3 | block4 | block5 | fc6 | pre_logits | best layer | vs random init | "
                "compared with | wall time |")
  assert resnet_header in md and vgg_header in md
  assert md.index("ResNet / RevNet") < md.index("- VGG")
  # Rows: the method first, then the references; best layer bold; pretext accuracy; wall time.
  rows = [l for l in md.splitlines() if l.startswith("| ") and "resnet50" in l]
  assert rows[0].startswith("| rotation-resnet50_v2-w1 | rotation | resnet50 v2 | 1 | 90.0% | "
                            "30.0 | 32.0 | 34.0 | **50.0** | 38.0 | 40.0 | block3 | +20.0 | "
                            "random_init-resnet50_v2-w1 | 12m34s |")
  assert rows[1].startswith("| *supervised-resnet50_v2-w1* (reference) |")
  assert "**70.0** | pre_logits | +40.0 |" in rows[1]
  assert "| block1 | - |" in rows[2]  # The baseline itself.
  assert rows[2].startswith("| *random_init-resnet50_v2-w1* (baseline) | random_init | "
                            "resnet50 v2 | 1 | - | 10.0 | **30.0** |")
  assert "| rotation-vgg19-w1 | rotation | vgg19 | 1 | 80.0% | 20.0 | 21.0 | 22.0 | **53.0** |" in md
  assert "| block4 | - | - |" in md  # No VGG baseline to compare with.
  assert "## Failed cells" in md and "unknown task 'jigsaw'" in md
  assert "## Configs" in md and "--run_eval" in md
  assert "- `rotation-vgg19-w1`: `--task=rotation --architecture=vgg19`" in md
  assert "shared by every cell:\n\n    --filters_factor=1 --epochs=3" in md

  with open(paths["csv"]) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 3 * 6 + 7
  rot = [r for r in rows if r["cell"] == "rotation-resnet50_v2-w1"]
  assert [r["layer"] for r in rot] == RESNET
  assert [r["depth"] for r in rot] == [str(i) for i in range(6)]
  assert [r["layer"] for r in rot if r["best"] == "1"] == ["block3"]
  assert float(rot[3]["top1"]) == pytest.approx(0.5)
  assert float(rot[0]["pretext_accuracy"]) == pytest.approx(0.9)
  assert float(rot[0]["best_over_random_init"]) == pytest.approx(0.2)
  assert rot[0]["compared_with"] == "random_init-resnet50_v2-w1"
  assert rot[0]["kind"] == "pretext" and rot[0]["family"] == "resnet"

  data = json.load(open(paths["json"]))
  assert [t["family"] for t in data["tables"]] == ["resnet", "vgg"]
  resnet = data["tables"][0]
  assert resnet["layers"] == RESNET
  assert [c["name"] for c in resnet["cells"]] == [
      "rotation-resnet50_v2-w1", "supervised-resnet50_v2-w1", "random_init-resnet50_v2-w1"]
  assert resnet["cells"][0]["best_layer"] == "block3"
  assert resnet["cells"][0]["layers"]["block3"]["top1"] == pytest.approx(0.5)
  assert resnet["cells"][0]["best_over_random_init"] == pytest.approx(0.2)
  assert resnet["cells"][0]["compared_with"] == "random_init-resnet50_v2-w1"
  assert data["failed"][0]["name"] == "jigsaw-resnet50_v2-w1"

  assert len(paths["plots"]) == 2
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import image as mpimg  # pylint: disable=g-import-not-at-top
  for plot in paths["plots"]:
    with open(plot, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(plot)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert f"]({os.path.basename(plot)})" in md

  assert "rotation-resnet50_v2-w1" in summary and "block3" in summary
  assert "50.0%" in summary and "failed: 1" in summary


def test_results_outside_the_runner_and_unknown_layers(tmp_path):
  """Cells without cell.json (a manual run) are named from results.json; odd layers kept."""
  root = str(tmp_path / "r")
  order = ["after_root", "block1", "extra", "block2", "pre_logits"]
  write_cell(root, "manual/linear_eval", "pretext", "rotation", "revnet50", 4,
             {n: 0.1 * (i + 1) for i, n in enumerate(order)}, with_state=False)
  cells, _ = report_lib.load_cells([root])
  assert len(cells) == 1
  cell = cells[0]
  assert (cell.name, cell.kind, cell.method, cell.family) == (
      "manual/linear_eval", "pretext", "rotation", "resnet")
  assert report_lib.layer_columns(cells) == order
  assert cell.wall_s == 12.0  # results.json's total time.


def test_results_outside_the_runner_meet_the_baseline_built_as_their_backbone(tmp_path):
  """Without cell.json's pairing, a probe of an export is compared with the random init whose
  recorded backbone settings agree (a ViT with sine-cosine positions: not the learned ones), on
  the input the cached probes saw (a flip acts in training alone)."""
  root = str(tmp_path / "r")
  vit = [f"block{i}" for i in range(1, 4)]
  made = {
      "mae": ("pretext", "mae", "sincos", "resize,flip_lr,-1_to_1", [0.5, 0.4, 0.3]),
      "random_learned": ("random_init", "random_init", "learned", "resize,flip_lr,-1_to_1",
                         [0.2, 0.2, 0.2]),
      "random_sincos": ("random_init", "random_init", "sincos", "resize,-1_to_1",
                        [0.1, 0.3, 0.2])}
  for name, (kind, method, position, spec, values) in made.items():
    directory = write_cell(root, name, kind, method, "vit", 3, dict(zip(vit, values)),
                           mode=None, with_state=False, eval_spec=spec)
    path = os.path.join(directory, "results.json")
    with open(path) as f:
      results = json.load(f)
    results["source"].update(vit_patch_size=4, vit_position_embedding=position)
    with open(path, "w") as f:
      json.dump(results, f)
  cells, _ = report_lib.load_cells([root])
  mae = next(c for c in cells if c.name == "mae")
  assert report_tables.baseline_of(mae, cells).name == "random_sincos"
  assert report_tables.baseline_label(mae, cells) == "random_sincos"
  assert report_lib.best_over_baseline(mae, cells) == pytest.approx(0.2)


def test_a_probe_outside_a_grid_shares_the_grid_cells_table(tmp_path):
  """A probe run in its own workdir and a grid cell's linear_eval of the same protocol are one
  table, and the probe is compared with the grid's random init."""
  root = str(tmp_path / "r")
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1))
  write_cell(root, "mine", "pretext", "rotation", "resnet50", 1, resnet_values(3),
             with_state=False)
  cells, _ = report_lib.load_cells([root])
  tables = report_lib.group_tables(cells)
  assert [sorted(c.name for c in group) for _, _, group in tables] == [
      ["mine", "random_init-resnet50_v2-w1"]]
  mine = next(c for c in cells if c.name == "mine")
  assert report_tables.baseline_of(mine, cells).name == "random_init-resnet50_v2-w1"


def test_merging_two_roots(root, tmp_path):
  other = str(tmp_path / "root_b")
  write_cell(other, "rotation-resnet50_v2-w2", "pretext", "rotation", "resnet50", 2,
             resnet_values(4, 0.35), pretext_acc=0.92)
  # The same cell in both roots: the newer results win, and the report says so.
  time.sleep(0.05)
  write_cell(other, "rotation-vgg19-w1", "pretext", "rotation", "vgg19", 1,
             {n: 0.6 for n in VGG}, pretext_acc=0.85, mode=None)
  out = str(tmp_path / "merged")
  proc = subprocess.run([sys.executable, "benchmark.py", "--report_only",
                         f"--root={root},{other}", f"--report_dir={out}"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert f"report: {out}/report.md" in proc.stdout
  md = open(os.path.join(out, "report.md")).read()
  assert "| rotation-resnet50_v2-w1 |" in md and "| rotation-resnet50_v2-w2 |" in md
  assert "| rotation-vgg19-w1 | rotation | vgg19 | 1 | 85.0% | **60.0** | 60.0 |" in md
  assert (f"rotation-vgg19-w1 (linear_eval): results in {other} (newer) used, {root} ignored"
          in md)
  data = json.load(open(os.path.join(out, "report.json")))
  assert data["roots"] == [root, other]
  names = [c["name"] for t in data["tables"] for c in t["cells"]]
  assert len(names) == len(set(names)) == 5
  roots = {c["name"]: c["root"] for t in data["tables"] for c in t["cells"]}
  assert roots["rotation-resnet50_v2-w2"] == other and roots["rotation-resnet50_v2-w1"] == root
  proc = subprocess.run([sys.executable, "benchmark.py", "--report_only",
                         f"--root={tmp_path}/missing"], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2 and "missing does not exist" in proc.stderr


def test_two_evaluations_of_a_cell_make_two_tables(tmp_path):
  root = str(tmp_path / "r")
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(2), pretext_acc=0.9)
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(4), pretext_acc=0.9, dataset="places", evaluation="places_linear")
  cells, notes = report_lib.load_cells([root])
  assert not notes and len(cells) == 2
  tables = report_lib.group_tables(cells)
  titles = [report_lib.evaluation_title(key) for key, _, _ in tables]
  assert titles == ["shapes: linear probes, trained on train, tested on test",
                    "places_linear (places: linear probes, trained on train, tested on test)"]
  assert [group[0].best_layer for _, _, group in tables] == ["block2", "block4"]


def test_fine_tuning_has_its_own_table_against_its_own_baseline(tmp_path):
  """Fine-tuning results (eval/fine_tune.py) beside the probes of the same cells: a table of
  their own per label fraction, compared with the random-init backbone fine-tuned the same way,
  and their settings under the fine-tuning step's title."""
  root = str(tmp_path / "r")
  for name, kind, method, probe, tuned in (
      ("simclr-resnet50_v2-w1", "pretext", "simclr", 0.40, 0.61),
      ("random_init-resnet50_v2-w1", "random_init", "random_init", 0.30, 0.42)):
    write_cell(root, name, kind, method, "resnet50", 1, {"block2": probe, "pre_logits": probe},
               pretext_acc=0.2 if kind == "pretext" else None)
    write_cell(root, name, kind, method, "resnet50", 1, {"pre_logits": tuned},
               evaluation="fine_tune_1pct", task="fine_tune",
               low_label={"train_fraction": 0.01, "examples_per_class": None, "seed": 0,
                          "num_train_examples": 450})
  cells, notes = report_lib.load_cells([root])
  assert not notes and len(cells) == 4
  tables = report_lib.group_tables(cells)
  titles = [report_lib.evaluation_title(key) for key, _, _ in tables]
  assert titles == [
      "fine_tune_1pct (shapes: the whole backbone fine-tuned with a linear head on pre_logits, "
      "trained on train, tested on test), low-label (fraction=0.01)",
      "shapes: linear probes, trained on train, tested on test"]
  tuned = tables[0][2]
  gain = report_lib.best_over_baseline(tuned[0], tuned)
  assert tuned[0].method == "simclr" and gain == pytest.approx(0.61 - 0.42)
  out = report_lib.write_report(cells, str(tmp_path / "report"), roots=[root])
  with open(out["markdown"]) as f:
    text = f.read()
  assert "Fine-tuning (train_and_eval.py --task=fine_tune) `fine_tune_1pct`" in text
  assert "Per-layer evaluation (train_and_eval.py --task=linear_eval) `linear_eval`" in text


def _run_record(tensorflow="2.21.0", accelerator=None):
  return {"git": {"commit": "0123456789abcdef", "dirty": True}, "command": "python x.py",
          "versions": {"python": "3.11.7", "tensorflow": tensorflow, "keras": "3.15.1",
                       "tensorflow_datasets": "4.9.10", "numpy": "2.4.6"},
          "devices": {"accelerator": accelerator, "count": 1 if accelerator else 0,
                      "names": ["NVIDIA H200"] if accelerator else [], "cpu": "AMD EPYC",
                      "cpu_count": 2},
          "strategy": {"name": "MirroredStrategy", "replicas": 2}, "random_seed": 3,
          "deterministic": True}


def test_run_records_are_listed_and_unlike_cells_of_a_table_flagged(tmp_path):
  root = str(tmp_path / "root")
  write_cell(root, "rotation-resnet50_v2-w1", "pretext", "rotation", "resnet50", 1,
             resnet_values(3), pretext_acc=0.9, run=_run_record())
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1), run=_run_record())
  write_cell(root, "rotation-vgg19-w1", "pretext", "rotation", "vgg19", 1,
             {n: 0.3 for n in VGG}, pretext_acc=0.8, mode=None, run=_run_record())
  paths, _ = report_lib.make_report([root])
  text = open(paths["markdown"]).read()
  records = text[text.index("## Run records"):]
  # One row per cell and phase: the baseline has no pretext phase.
  rows = [l for l in records.splitlines() if l.startswith("| rotation") or
          l.startswith("| random")]
  assert len(rows) == 5, rows
  row = next(l for l in rows if l.startswith("| rotation-resnet50_v2-w1 | pretext"))
  assert "0123456789+dirty" in row and "tensorflow 2.21.0" in row
  assert "CPU: AMD EPYC, 2 cores" in row and "MirroredStrategy x2" in row and "3 (det.)" in row
  assert "training 10m00s" in row and "total 11m40s" in row
  assert "different versions or devices" not in text
  saved = json.load(open(paths["json"]))["tables"][0]["cells"][0]["runs"]
  assert saved["pretext"]["run"]["versions"]["tensorflow"] == "2.21.0"

  # The baseline evaluated elsewhere with another TensorFlow on a GPU: its table says so, the
  # VGG table (whose cells agree) does not.
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1), run=_run_record("2.20.0", "GPU"))
  paths, _ = report_lib.make_report([root])
  text = open(paths["markdown"]).read()
  notes = [l for l in text.splitlines() if "different versions or devices" in l]
  assert len(notes) == 1, notes
  assert "random_init-resnet50_v2-w1 (linear_eval): python 3.11.7, tensorflow 2.20.0" in notes[0]
  assert "1 x GPU (NVIDIA H200)" in notes[0]
  section = next(part for part in text.split("\n## ") if notes[0] in part)
  assert "| rotation-resnet50_v2-w1 |" in section and "rotation-vgg19" not in section

  # The baseline again on the same CPU and TensorFlow, but on Eigen's kernels (oneDNN off):
  # flagged as well.
  off = _run_record()
  off["environment"] = {"TF_ENABLE_ONEDNN_OPTS": "0"}
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(1, 0.1), run=off)
  paths, _ = report_lib.make_report([root])
  notes = [l for l in open(paths["markdown"]).read().splitlines()
           if "different versions or devices" in l]
  assert len(notes) == 1 and "CPU: AMD EPYC, 2 cores, oneDNN off" in notes[0], notes


def test_cells_that_differ_only_in_their_seed_show_their_spread(tmp_path):
  root = str(tmp_path / "root")
  for seed, peak in ((0, 0.50), (1, 0.56), (2, 0.53)):
    directory = write_cell(root, f"rotation-resnet50_v2-w1-random_seed{seed}", "pretext",
                           "rotation", "resnet50", 1,
                           {n: (peak if n == "block2" else 0.3) for n in RESNET},
                           pretext_acc=0.8)
    with open(os.path.join(directory, "cell.json")) as f:
      state = json.load(f)
    state["axes"] = {"random_seed": seed}
    state["pretext_flags"]["random_seed"] = str(seed)
    with open(os.path.join(directory, "cell.json"), "w") as f:
      json.dump(state, f)
  write_cell(root, "rotation-resnet50_v2-w2", "pretext", "rotation", "resnet50", 2,
             {n: 0.6 for n in RESNET}, pretext_acc=0.9)
  paths, _ = report_lib.make_report([root])
  text = open(paths["markdown"]).read()
  assert "Spread over seeds" in text
  row = next(l for l in text.splitlines() if l.startswith("| rotation-resnet50_v2-w1-random_seed0, "))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[1] == "0, 1, 2"
  assert cells[2 + RESNET.index("block2")] == "53.0 (50.0-56.0)"
  assert cells[2 + RESNET.index("block1")] == "30.0 (30.0-30.0)"
  assert cells[-1] == "53.0 (50.0-56.0)"
  assert "rotation-resnet50_v2-w2" not in row  # Another width is not another seed.


def test_a_method_without_an_accuracy_shows_the_metric_it_names(tmp_path):
  """BYOL names its cosine (pretext_results.json's pretext_metric): the tables, the summary, the
  CSV and the JSON show it by name; an accuracy is shown in %, also from files written before
  the name was recorded."""
  root = str(tmp_path / "root")
  write_cell(root, "byol-resnet50_v2-w1", "pretext", "byol", "resnet50", 1, resnet_values(1),
             pretext_metrics={"cosine": 0.7443, "loss": 1.02}, pretext_metric="cosine")
  write_cell(root, "simclr-resnet50_v2-w1", "pretext", "simclr", "resnet50", 1,
             resnet_values(2), pretext_metrics={"accuracy": 0.328, "contrast_acc": 0.4})
  write_cell(root, "random_init-resnet50_v2-w1", "random_init", "random_init", "resnet50", 1,
             resnet_values(0, 0.1))
  paths, summary = report_lib.make_report([root])
  md = open(paths["markdown"]).read()
  assert "| byol-resnet50_v2-w1 | byol | resnet50 v2 | 1 | cosine 0.744 | " in md
  assert "| simclr-resnet50_v2-w1 | simclr | resnet50 v2 | 1 | 32.8% | " in md
  assert "pretext cosine 0.744" in summary and "pretext 32.8%" in summary
  with open(paths["csv"]) as f:
    rows = {r["cell"]: r for r in csv.DictReader(f)}
  assert rows["byol-resnet50_v2-w1"]["pretext_metric"] == "cosine"
  assert float(rows["byol-resnet50_v2-w1"]["pretext_value"]) == pytest.approx(0.7443)
  assert rows["byol-resnet50_v2-w1"]["pretext_accuracy"] == ""
  assert rows["simclr-resnet50_v2-w1"]["pretext_metric"] == "accuracy"
  cells = {c["name"]: c for c in json.load(open(paths["json"]))["tables"][0]["cells"]}
  assert cells["byol-resnet50_v2-w1"]["pretext_metric"] == {"name": "cosine", "value": 0.7443}
  assert cells["random_init-resnet50_v2-w1"]["pretext_metric"] is None


def test_findings_say_where_each_cell_peaks_and_whether_it_keeps_it_to_the_end(root):
  """The paper's layer question in sentences: the rotation ResNet peaks at block3 and falls to
  pre_logits, the supervised one rises to it; VGG's peaks at block4 and falls; per family, how
  many keep their quality to the last layer; gains over random init where it is paired."""
  from report import findings  # pylint: disable=g-import-not-at-top
  paths, _ = report_lib.make_report([root])
  md = open(paths["markdown"]).read()
  section = md[md.index("## Findings"):]
  # resnet_values(3): block3 0.5, pre_logits 0.4; random init's best: block1 at 0.3.
  assert ("- *rotation-resnet50_v2-w1* peaks at block3 (50.0) and falls by 10.0 points to its "
          "last layer, pre_logits (40.0); +20.0 points over random init at its best layer."
          ) in section
  assert ("- *supervised-resnet50_v2-w1* rises to its last layer, pre_logits (70.0); "
          "+40.0 points over random init at its best layer.") in section
  assert ("**ResNet / RevNet** (shapes, linear probes): 1 of 2 trained cell(s) keep their "
          "quality to the last layer (within 1 point of their best).") in section
  assert "- *rotation-vgg19-w1* peaks at block4 (53.0) and falls by" in section
  assert "random_init-resnet50_v2-w1*" not in section  # Baselines are the reference, not found.
  assert findings.HOLD_POINTS == 1.0
