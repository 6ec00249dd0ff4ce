"""Real cells through benchmark.py (train_and_eval.py at tiny sizes), with the local executor and,
on a SLURM cluster, with the SLURM executor: the same cells and the same numbers."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from grid import slurm_cluster
from tests.conftest import REPO_ROOT

POLL = ["--executor=slurm", "--slurm_poll_s=1", "--progress_every_s=5"]


def _benchmark(*args, timeout=600, env=None):
  return subprocess.run([sys.executable, "benchmark.py", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _status(root):
  with open(os.path.join(root, "grid_status.json")) as f:
    return json.load(f)["cells"]


def _write(path, text):
  with open(path, "w") as f:
    f.write(textwrap.dedent(text))
  return str(path)


def _grid(tmp_path, data_dir, cells, slurm_table="cpus_per_task = 1\ntime = 20",
          pretext="", baselines=True):
  """A tiny grid on shapes_small: VGG19 at width 1, 32x32, a few steps, no random ops in the
  preprocessing (so that two runs give the same numbers)."""
  return _write(tmp_path / "grid.toml", f"""
[grid]
name = "tiny"
[defaults]
dataset = "shapes_small"
data_dir = "{data_dir}"
[pretext]
train_split = "train[:32]"
val_split = "test[:16]"
epochs = 1
batch_size = 8
eval_batch_size = 16
warmup_epochs = 0
decay_epochs = []
architecture = "vgg19"
filters_factor = 1
resize_size = 32
{pretext}
[evaluation]
flagfile = "configs/evaluation/shapes.flags"
train_split = "train[:64]"
val_split = "test[:32]"
epochs = 1
decay_epochs = []
batch_size = 32
[baselines]
random_init = {str(baselines).lower()}
[slurm]
{slurm_table}
{cells}
""")


CELLS = """
[[cells]]
method = "rotation"
flagfile = "configs/rotation/shapes.flags"
flags = { preprocessing = "resize,-1_to_1,rotate" }
[[cells]]
method = "supervised"
flagfile = "configs/supervised/shapes.flags"
flags = { preprocessing = "resize,-1_to_1" }
[[cells]]
method = "rotation"
tag = "broken"
flagfile = "configs/rotation/shapes.flags"
flags = { preprocessing = "resize,-1_to_1,rotate", lr = 1e30 }
"""
NAMES = ["rotation-vgg19-w1", "supervised-vgg19-w1", "rotation-vgg19-w1-broken",
         "random_init-vgg19-w1"]


def _ctrl_c_interrupts():
  # A suite started in the background of a shell inherits SIGINT ignored, and Python then keeps
  # it ignored: give the runner the disposition of a terminal's foreground process.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def attached_runner(grid, root) -> subprocess.Popen:
  """benchmark.py --executor=slurm on a root whose jobs are queued, once it watches them
  (SIGINT interrupts it, as Ctrl-C would)."""
  proc = subprocess.Popen([sys.executable, "benchmark.py", f"--grid={grid}", f"--root={root}",
                           *POLL], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, preexec_fn=_ctrl_c_interrupts)
  for line in proc.stdout:
    if "watching its SLURM job" in line:
      return proc
  raise AssertionError(f"the runner ended without watching a job (exit {proc.wait()})")


def _numbers(root, name):
  """What the report shows of a cell: per-layer top-1 and loss, pretext metrics."""
  out = {}
  results = os.path.join(root, name, "linear_eval", "results.json")
  if os.path.exists(results):
    with open(results) as f:
      out["layers"] = json.load(f)["layers"]
  pretext = os.path.join(root, name, "pretext_results.json")
  if os.path.exists(pretext):
    with open(pretext) as f:
      out["pretext"] = json.load(f)["metrics"]
  return out


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, shapes_data_dir):
  """The tiny grid of CELLS and its baseline, run by the local executor, two cells at a time."""
  directory = tmp_path_factory.mktemp("tiny")
  grid = _grid(directory, shapes_data_dir, CELLS)
  root = str(directory / "local")
  start = time.time()
  proc = _benchmark(f"--grid={grid}", f"--root={root}", "--jobs=2")
  return dict(grid=grid, root=root, proc=proc, seconds=time.time() - start)


def test_real_cells_end_to_end(local_run):
  """Pretext training, export, per-layer evaluation and the report; a failing cell is recorded
  and the others finish; run again, the finished cells are skipped."""
  proc, root = local_run["proc"], local_run["root"]
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # The broken cell.
  assert "grid finished" in proc.stdout and "3/4 done, 1 failed" in proc.stdout
  cell = os.path.join(root, "rotation-vgg19-w1")
  for name in ("linear_eval/results.json", "pretext_results.json", "cell.json", "log.txt",
               "export/saved_model.pb"):
    assert os.path.exists(os.path.join(cell, name)), name
  results = json.load(open(os.path.join(cell, "linear_eval", "results.json")))
  assert results["layer_order"][:2] == ["block1", "block2"]
  assert results["source"]["task"] == "rotation"
  base = json.load(open(os.path.join(root, "random_init-vgg19-w1", "linear_eval",
                                    "results.json")))
  assert base["source"]["hub_module"] == "random_init"
  # The baseline was probed on exactly the input of the trained cells' exports.
  assert base["source"]["eval_preprocessing"] == results["source"]["eval_preprocessing"] == (
      "resize,-1_to_1")
  assert json.load(open(os.path.join(cell, "cell.json")))["baseline"] == "random_init-vgg19-w1"
  broken = _status(root)["rotation-vgg19-w1-broken"]
  assert broken["status"] == "failed" and broken["exit_code"] == 1
  assert "non-finite loss" in broken["error"]
  report = open(os.path.join(root, "report", "report.md")).read()
  assert "| rotation-vgg19-w1 | rotation | vgg19 | 1 |" in report
  assert re.search(r"\| rotation-vgg19-w1 \|.*\| [+-]\d+\.\d \| random_init-vgg19-w1 \|",
                   report)
  assert "*random_init-vgg19-w1* (baseline)" in report
  # Again: the finished cells are skipped without starting train_and_eval.py.
  sizes = {n: os.path.getsize(os.path.join(root, n, "log.txt")) for n in NAMES}
  again = _benchmark(f"--grid={local_run['grid']}", f"--root={root}")
  assert again.returncode == 1 and "3 already done, 1 to run" in again.stdout
  for name in NAMES:
    grew = os.path.getsize(os.path.join(root, name, "log.txt")) > sizes[name]
    assert grew == (name == "rotation-vgg19-w1-broken"), name


def test_the_reference_gives_every_field_a_grid_writes(local_run):
  """docs/reference.md's fields of each result file (report/reference.py, from the writers'
  docstrings) hold every key of the files this grid wrote, and those of the tables in them."""
  from report import reference  # pylint: disable=g-import-not-at-top
  root = local_run["root"]
  cell = os.path.join(root, "rotation-vgg19-w1")
  # name: (path, the fields one level down that are checked too).
  written = {
      "pretext_results.json": (os.path.join(cell, "pretext_results.json"),
                               ("metrics", "times")),
      "export_info.json": (os.path.join(cell, "export", "export_info.json"), ()),
      "results.json": (os.path.join(cell, "linear_eval", "results.json"),
                       ("source", "dataset", "best_layer", "times")),
      "the run record": (os.path.join(cell, "pretext_results.json"),
                         ("git", "versions", "devices", "strategy")),
      "cell.json": (os.path.join(cell, "cell.json"), ("grid",)),
      "grid_status.json": (os.path.join(root, "grid_status.json"), ("grid",)),
      "report.json": (os.path.join(root, "report", "report.json"), ())}
  entries = {e[0]: e for e in reference.RESULT_FILES}
  assert set(written) <= set(entries)
  for name, (path, nested) in written.items():
    documented = set(re.findall(r'"([a-z_0-9]+)"', reference.fields_block(*entries[name][2:])))
    data = json.load(open(path))
    data = data["run"] if name == "the run record" else data
    keys = set(data).union(*(data[k] for k in nested))
    assert keys <= documented, (name, sorted(keys - documented))


@pytest.mark.slow
def test_grid_on_slurm_gives_the_local_numbers_detached_then_attached(local_run, slurm_root):
  """Two trained cells, a baseline and a cell that fails (its loss diverges): --detach submits
  one job per cell and exits; the same command attaches to those jobs (no second job for any
  cell) and writes the report when the last ends. Every cell has the numbers of the local
  executor (one CPU per cell in both), the failing cell fails once, without retries."""
  grid, local_root = local_run["grid"], local_run["root"]
  assert local_run["proc"].returncode == 1, local_run["proc"].stderr[-3000:]
  start = time.time()
  detached = _benchmark(f"--grid={grid}", f"--root={slurm_root}", "--detach", *POLL)
  assert detached.returncode == 0, detached.stderr[-3000:]
  assert "detached: 4 SLURM job(s) queued or running" in detached.stdout
  jobs = {n: _status(slurm_root)[n]["job_id"] for n in NAMES}
  assert len(set(jobs.values())) == 4
  listed = _benchmark(f"--grid={grid}", f"--root={slurm_root}", "--list", "--executor=slurm")
  assert all(f"SLURM job {jobs[n]}, " in listed.stdout for n in NAMES), listed.stdout
  # Ctrl-C while attached stops the watching, not the jobs.
  proc = attached_runner(grid, slurm_root)
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 130, out
  assert "interrupted: the SLURM jobs keep running" in out and "--cancel cancels them" in out
  queued = slurm_cluster.queue()
  assert not [n for n in NAMES if queued[jobs[n]]["state"] == "CANCELLED"], queued

  attached = _benchmark(f"--grid={grid}", f"--root={slurm_root}", *POLL)
  slurm_s = time.time() - start
  assert attached.returncode == 1, attached.stdout[-3000:] + attached.stderr[-3000:]
  assert "3/4 done, 1 failed" in attached.stdout
  assert "submitted as SLURM job" not in attached.stdout  # Attached, nothing resubmitted.
  status = _status(slurm_root)
  for name in NAMES:
    assert [a["job_id"] for a in status[name]["attempts"]] == [jobs[name]], name
    assert _numbers(slurm_root, name) == _numbers(local_root, name), name
  broken = status["rotation-vgg19-w1-broken"]
  assert broken["status"] == "failed" and broken["failed_step"] == "pretext"
  assert broken["exit_code"] == 1 and "non-finite loss" in broken["error"]
  assert broken["attempts"][0]["outcome"] == "failed"
  assert _status(local_root)["rotation-vgg19-w1-broken"]["error"] == broken["error"]
  assert all(status[n]["status"] == "done" and status[n]["attempts"][0]["state"] == "COMPLETED"
             for n in NAMES if n != "rotation-vgg19-w1-broken")
  # Every attempt's logs stay in the cell folder.
  assert os.path.getsize(os.path.join(slurm_root, "rotation-vgg19-w1", "slurm",
                                      f"{jobs['rotation-vgg19-w1']}_0_log.out")) > 0
  with open(os.path.join(slurm_root, "report", "report.md")) as f:
    report = f.read()
  with open(os.path.join(local_root, "report", "report.md")) as f:
    local_report = f.read()
  # The rows of the report's tables, up to the wall time column (not the run records, whose
  # times differ).
  rows = lambda text: [l.rsplit("|", 2)[0] for l in text.split("## Run records")[0].splitlines()
                       if l.startswith(("| rotation-vgg19-w1 ", "| *supervised-vgg19-w1* "))]
  assert len(rows(report)) == 2 and rows(report) == rows(local_report)
  print(f"\nsmall grid: submit to report {slurm_s:.0f} s on SLURM, {local_run['seconds']:.0f} s "
        "locally (--jobs=2)")


BAD = """
[[cells]]
method = "rotation"
flagfile = "configs/rotation/shapes.flags"
flags = { preprocessing = "resize,flip,-1_to_1,rotate" }
[[cells]]
method = "supervised"
flagfile = "configs/supervised/shapes.flags"
flags = { preprocessing = "resize,-1_to_1", dataset = "folder:{missing}" }
"""


def test_a_grid_that_would_fail_is_refused_before_any_cell_starts(tmp_path, shapes_data_dir):
  """Each step's own checks (an unknown op, in a pretext step and in its baseline's probe, an
  image folder not made yet, with the command that makes the suite's), for every cell, before
  the first starts: one line per problem naming the steps, exit status 2, nothing written in
  the root."""
  grid = _grid(tmp_path, shapes_data_dir, BAD.replace("{missing}", str(tmp_path / "photos")))
  root = tmp_path / "root"
  proc = _benchmark(f"--grid={grid}", f"--root={root}")
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 3, proc.stderr
  assert re.match(r"error: --preprocessing='resize,flip,-1_to_1,rotate': unknown preprocessing "
                  r"op 'flip' in spec .*; valid ops: .*flip_lr.* \(rotation-vgg19-w1, step "
                  r"pretext\)$", errors[0]), errors[0]
  assert errors[1].startswith(f"error: --dataset='folder:{tmp_path}/photos': image folder root "
                              f"{tmp_path}/photos does not exist")
  assert f"scripts/prepare_photos.py --out={tmp_path}/photos" in errors[1]
  assert errors[1].endswith("(supervised-vgg19-w1, step pretext)")
  # The rotation cell's random-init baseline probes the same input: its spec is known without
  # an export, so its own check finds the op too.
  assert re.match(r"error: eval_preprocessing='resize,flip,-1_to_1': unknown preprocessing op "
                  r"'flip' .* \(random_init-vgg19-w1, step eval:linear_eval\)$", errors[2])
  assert f"3 problem(s) in the steps of {grid}, found before they run; nothing was run" in (
      proc.stderr)
  assert not root.exists()


@pytest.mark.slow
def test_the_paper_grids_smoke_run_probes_a_patch_method_on_its_patches(tmp_path):
  """benchmark.py --smoke on configs/grids/imagenet_paper.toml as it is, on an ImageNet-shaped
  set: a jigsaw cell trained on 64x64 patches of 255x255 crops at 292, exported, probed on 3x3
  patches of the central 192x192 of each image resized to 224 (imagenet_patches.flags) next to
  its random-init baseline on the same patches, then the report with both."""
  from datasets import imagenet_like  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "imagenet"
  imagenet_like.prepare(str(data_dir), classes=4, train_per_class=16, val_per_class=8)
  root = tmp_path / "root"
  proc = _benchmark("--grid=configs/grids/imagenet_paper.toml", "--smoke", f"--root={root}",
                    f"--data_dir={data_dir}", "--jobs=2",
                    "--cells=jigsaw-resnet50_v1-w1,random_init-resnet50_v1-w1-patches",
                    timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(root / "jigsaw-resnet50_v1-w1" / "export" / "export_info.json") as f:
    assert json.load(f)["input_shape"] == [64, 64, 3]
  layers = {}
  for cell in ("jigsaw-resnet50_v1-w1", "random_init-resnet50_v1-w1-patches"):
    with open(root / cell / "linear_eval" / "results.json") as f:
      results = json.load(f)
    assert results["source"]["eval_preprocessing"] == (
        "resize_small,central_crop,crop_patches,standardization")
    assert results["config"]["preprocess_params"]["crop_size"] in ([192, 192], 192)
    assert results["dataset"]["num_train_examples"] == 64
    assert not os.path.exists(root / cell / "linear_eval" / "feature_cache")  # Removed when done.
    layers[cell] = {k: v["dim"] for k, v in results["layers"].items()}
  trained, baseline = layers.values()
  assert {k: v for k, v in trained.items() if k in baseline} == baseline  # The same backbone.
  report = (root / "report" / "report.md").read_text()
  assert "jigsaw-resnet50_v1-w1" in report and "random_init-resnet50_v1-w1-patches" in report


@pytest.mark.slow
def test_the_paper_grids_smoke_run_probes_colorization_on_the_lightness(tmp_path):
  """benchmark.py --smoke on configs/grids/imagenet_paper.toml's colorization cell, on an
  ImageNet-shaped set: trained on the lightness of 224x224 crops (colour bins of each 4x4
  pixels), exported, probed on the lightness of the central crops as its grid cell says, next to
  its random-init baseline on the same lightness input; the report pairs the two."""
  from datasets import imagenet_like  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "imagenet"
  imagenet_like.prepare(str(data_dir), classes=4, train_per_class=16, val_per_class=8)
  root = tmp_path / "root"
  cell, baseline = "colorization-resnet50_v2-w1", "random_init-resnet50_v2-w1-input2"
  proc = _benchmark("--grid=configs/grids/imagenet_paper.toml", "--smoke", f"--root={root}",
                    f"--data_dir={data_dir}", "--jobs=2", f"--cells={cell},{baseline}",
                    timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  with open(root / cell / "export" / "export_info.json") as f:
    info = json.load(f)
  assert info["eval_preprocessing"] == "resize_small,crop,flip_lr,lightness,-1_to_1"
  assert info["input_shape"] == [224, 224, 3] and "logits" not in info["end_points"]
  for name in (cell, baseline):
    with open(root / name / "linear_eval" / "results.json") as f:
      results = json.load(f)
    assert results["source"]["eval_preprocessing"] == (
        "resize_small,central_crop,lightness,-1_to_1"), name
    assert list(results["layers"]) == info["end_points"], name
  report = (root / "report" / "report.md").read_text()
  row = next(l for l in report.splitlines() if l.startswith(f"| {cell} "))
  assert row.rstrip(" |").split("|")[-2].strip() == baseline, row

