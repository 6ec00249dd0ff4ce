"""The plan of a grid (benchmark.py --plan, grid/plan.py): the ImageNet grids fit their [slurm]
settings at ImageNet's size, and a grid that would not fit is refused before anything runs or
is submitted, with one line naming the cell, the step, the estimate and the setting to change."""

import re
import subprocess
import sys

import pytest

from bench import imagenet_plan
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="session")
def imagenet_sized_dir(tmp_path_factory):
  """The ImageNet-shaped set with metadata of ImageNet's split sizes (bench/imagenet_plan.py):
  what the plan reads of a dataset is then ImageNet's, without its 140 GB."""
  return imagenet_plan.imagenet_sized(str(tmp_path_factory.mktemp("imagenet_sized")))


# Of the paper grid, a cell of each [slurm] setting it has (one node; 2, 4 and 8 nodes), of each
# kind of input (whole images, patches) and of each kind of cell, the widest where it matters.
PAPER_CELLS = ["rotation-resnet50_v1-w12", "rotation-resnet50_v2-w16", "exemplar-resnet50_v1-w16",
               "jigsaw-vgg19-w16", "simclr-resnet50_v1-w16", "supervised-vgg19-w8",
               "random_init-vgg19-w16", "random_init-revnet50-w16-patches",
               "byol-resnet50_v1-w4", "moco-resnet50_v1-w4"]


@pytest.mark.parametrize("grid_file,patterns", [
    pytest.param("configs/grids/imagenet_paper.toml", PAPER_CELLS, marks=pytest.mark.slow),
    ("configs/grids/imagenet_semi_supervised.toml", ()),
], ids=["paper", "semi_supervised"])
def test_the_imagenet_grids_fit_their_slurm_settings_at_imagenet_size(
    grid_file, patterns, imagenet_sized_dir, tmp_path):
  from grid import plan  # pylint: disable=g-import-not-at-top
  # The grid root on the cluster's shared file system, of 1 PiB.
  problems, rows, _, cells = imagenet_plan.plan(grid_file, imagenet_sized_dir,
                                                str(tmp_path / "root"), patterns, free_disk=1 << 50)
  assert problems == []
  assert {r.cell for r in rows} == {c.name for c in cells}
  assert len(rows) == sum(len(c.steps("w")) for c in cells)  # Every step planned.
  gib = 1 << 30
  for r in rows:
    p, e = r.placement, r.estimate
    assert p.gpus and p.gpu_bytes == 80 * gib
    assert 0.5 * gib < e["device_bytes"] <= plan.GPU_FIT * p.gpu_bytes, r
    if r.step == "eval:linear_eval":  # ImageNet's features in a store on disk.
      assert e["scratch_bytes"] > 150 * gib, r
      assert r.node_host_bytes <= min(p.host_bytes, e["scratch_bytes"] / 4), r
  by = {(r.cell, r.step): r for r in rows}
  if patterns:  # The paper grid: SimCLR at 4x on 8 nodes of 8 GPUs, the global batch over all.
    simclr = by["simclr-resnet50_v1-w16", "pretext"]
    assert simclr.placement.replicas == 64
    assert "64 examples x 2 images of 224x224x3 per replica" in simclr.estimate["what"]
  else:  # Fine-tuning mirrored over a node's 8 GPUs.
    for name in ("simclr-resnet50_v1-w4", "random_init-resnet50_v1-w4"):
      assert by[name, "eval:fine_tune_1pct"].placement.replicas == 8


def _grid_file(tmp_path, slurm):
  path = tmp_path / "grid.toml"
  path.write_text(f"""
[grid]
name = "tiny"
[defaults]
dataset = "shapes"
[pretext]
epochs = 0.01
[evaluation]
flagfile = "configs/evaluation/shapes.flags"
train_split = "train[:512]"
val_split = "test[:256]"
[slurm]
time = "10"
{slurm}
[[cells]]
method = "rotation"
axes = {{ architecture = ["resnet50"], mode = ["v2"], filters_factor = [1] }}
""")
  return path


def _benchmark(*args):
  return subprocess.run([sys.executable, "benchmark.py", *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=600)


_CELL = "rotation-resnet50_v2-w1"
_WHERE = f"the slurm settings of cell {_CELL}"


@pytest.mark.parametrize("slurm,expected", [
    ('mem = "1G"', [
        rf"error: {_CELL}, step pretext: needs about [0-9.]+ GiB of host memory per node "
        rf"\(training resnet50 w1 .*\), over the 1 GiB of {_WHERE}; raise mem in its slurm table "
        r"\(or \[slurm\]\)$",
        rf"error: {_CELL}, step eval:linear_eval: needs about [0-9.]+ GiB of host memory per node "
        rf"\(features of resnet50 w1 for 512 images of 32x32x3; .* of 512 \+ 256 examples\), over "
        rf"the 1 GiB of {_WHERE}; raise mem in its slurm table \(or \[slurm\]\)$"]),
    ('gpus_per_node = 1\ngpu_mem = "64M"', [
        rf"error: {_CELL}, step pretext: needs about [0-9.]+ GiB per GPU \(training resnet50 w1 "
        r"\(\d+M parameters, float32\) on 64 examples x 4 images of 32x32x3 per replica, on 1 "
        rf"GPU\(s\)\), over 90% of the 0.0625 GiB of {_WHERE}; give it more GPUs \(nodes or "
        r"gpus_per_node in its slurm table: .*\) or set gpu_mem to its GPUs' memory$"]),
], ids=["mem", "gpu_mem"])
def test_a_grid_that_does_not_fit_its_slurm_settings_is_refused_with_one_line_per_step(
    slurm, expected, shapes_data_dir, tmp_path):
  grid = _grid_file(tmp_path, slurm)
  root = tmp_path / "root"
  proc = _benchmark(f"--grid={grid}", f"--root={root}", f"--data_dir={shapes_data_dir}",
                    "--executor=slurm", "--plan")
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == len(expected), proc.stderr[-3000:]
  for line, pattern in zip(errors, expected):
    assert re.match(pattern, line), line
  assert f"{_CELL}  pretext" in proc.stdout  # The plan is printed all the same.
  assert not root.exists()


def test_a_local_run_that_would_not_fit_this_machine_starts_nothing(shapes_data_dir, tmp_path):
  """Every run checks the plan before its first cell: 64 cells at once share this machine's
  memory 64 ways, less than a TensorFlow process's own."""
  grid = _grid_file(tmp_path, "")
  root = tmp_path / "root"
  proc = _benchmark(f"--grid={grid}", f"--root={root}", f"--data_dir={shapes_data_dir}",
                    "--jobs=64")
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert re.search(r"error: rotation-resnet50_v2-w1, step pretext: needs about [0-9.]+ GiB of "
                   r"host memory \(.*\), over the [0-9.]+ GiB of this machine \(--jobs=64: a "
                   r"share of 1/64 each\); fewer --jobs", proc.stderr), proc.stderr[-3000:]
  assert "nothing was run" in proc.stderr
  assert not root.exists()
