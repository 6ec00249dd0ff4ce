"""The SLURM executor on a real one-node cluster (scripts/slurm_cluster_start.sh), and its
settings without one.

The cluster tests run train_and_eval.py for real, at tiny sizes: a cancelled multi-worker job
is resubmitted and resumes from its checkpoint; srun runs a 2-task multi-worker training; bad
settings fail before anything is submitted. A grid through SLURM against the local executor:
tests/test_grid_end_to_end.py.
"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from grid import slurm
from grid import slurm_cluster
from grid import slurm_settings
from grid.cells import Cell
from grid.common import GridError
from tests.conftest import REPO_ROOT
from tests.test_grid_end_to_end import (BAD, CELLS, POLL, _benchmark, _grid, _status, _write,
                                         attached_runner)
from tests.test_train_and_eval import _RUN, small_config


@pytest.mark.slow
def test_cancelled_multi_worker_job_is_resubmitted_and_resumes(tmp_path, shapes_data_dir,
                                                               slurm_root):
  """scancel of a 2-task (multi-worker) cell's job in the middle of its training, once it has
  saved a checkpoint (at step 14 of 100): both workers save the step the signal arrives at and
  stop; the runner resubmits the job, the cell resumes from exactly that step (not the last
  periodic checkpoint, every 7 steps) and ends at the planned step, and the status file holds
  both attempts. The cancel follows the checkpoint state, which TensorFlow writes straight to
  disk; the job's log reaches the file later, by which time a fast machine had trained to the
  end."""
  grid = _grid(tmp_path, shapes_data_dir, """
[[cells]]
method = "rotation"
flagfile = "configs/rotation/shapes.flags"
flags = { preprocessing = "resize,-1_to_1,rotate", train_split = "train[:400]", epochs = 2 }
slurm = { tasks_per_node = 2 }
""", pretext="save_checkpoints_steps = 7\nlog_every_steps = 5", baselines=False)
  cell = os.path.join(slurm_root, "rotation-vgg19-w1")
  proc = subprocess.Popen([sys.executable, "benchmark.py", f"--grid={grid}",
                           f"--root={slurm_root}", *POLL], cwd=REPO_ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  try:
    checkpoint = os.path.join(cell, "checkpoints", "checkpoint")

    def reached_step_14() -> bool:
      if not os.path.exists(checkpoint):
        return False
      with open(checkpoint) as f:
        saved = re.findall(r'model_checkpoint_path: ".*ckpt-(\d+)"', f.read())
      return bool(saved) and int(saved[0]) >= 14

    deadline = time.time() + 300
    while not reached_step_14() and time.time() < deadline and proc.poll() is None:
      time.sleep(0.1)
    assert reached_step_14(), "no checkpoint by step 14"
    first = _status(slurm_root)["rotation-vgg19-w1"]["job_id"]
    subprocess.run(["scancel", first], check=True)
    second = _benchmark(f"--grid={grid}", f"--root={slurm_root}", *POLL)
    assert second.returncode == 2 and "is attached to the SLURM jobs of" in second.stderr
    out, _ = proc.communicate(timeout=400)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, out[-3000:]
  assert f"SLURM job {first} ended without its results (CANCELLED" in out
  attempts = _status(slurm_root)["rotation-vgg19-w1"]["attempts"]
  assert [a["state"] for a in attempts] == ["CANCELLED", "COMPLETED"], attempts
  assert attempts[0]["job_id"] == first and attempts[1]["outcome"] == "done"
  assert attempts[0]["outcome"] in ("interrupted", "killed")  # Stopped from outside.
  for attempt in attempts:
    assert os.path.exists(attempt["log"]), attempt
  with open(os.path.join(cell, "log.txt")) as f:
    log = f.read()
  first_attempt, second_attempt = log.split("\nrestored ", 1)
  assert "step 100/100" not in first_attempt  # Stopped mid-training.
  stopped = int(re.search(r"^interrupted by SIGTERM at step (\d+) of 100: saved ",
                          first_attempt, re.M).group(1))
  restored = int(second_attempt.split("\n", 1)[0].rsplit(" ", 1)[1])
  assert 14 <= restored == stopped < 100, (restored, stopped)
  assert "2 replica(s)" in first_attempt and "2 replica(s)" in second_attempt
  assert f"from step {restored} to 100" in second_attempt and "step 100/100" in second_attempt
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert tf.train.latest_checkpoint(os.path.join(cell, "checkpoints")).endswith("-100")
  with open(os.path.join(cell, "export", "export_info.json")) as f:
    assert json.load(f)["step"] == 100
  assert not [p for p in os.listdir(cell) if p.startswith("worker")]  # Only the chief's files.


def test_a_grid_that_would_fail_is_refused_before_anything_is_submitted(tmp_path,
                                                                        shapes_data_dir,
                                                                        slurm_root):
  """The steps' own checks run before the first job is submitted, as with the local executor
  (tests/test_grid_end_to_end.py): exit status 2, no job, nothing in the root."""
  grid = _grid(tmp_path, shapes_data_dir, BAD.replace("{missing}", str(tmp_path / "photos")))
  proc = _benchmark(f"--grid={grid}", f"--root={slurm_root}", *POLL)
  assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "unknown preprocessing op 'flip'" in proc.stderr
  assert "scripts/prepare_photos.py" in proc.stderr and "nothing was run" in proc.stderr
  assert not [j for j in slurm_cluster.queue().values() if slurm_root in j["comment"]]
  assert not os.path.exists(slurm_root)


@pytest.mark.slow
def test_srun_multi_worker_training_ends_with_the_same_weights(tmp_path, shapes_data_dir,
                                                               slurm_conf):
  """`srun -n 2` of a --strategy=multi_worker training (one CPU per task, no TF_CONFIG): the
  two workers find each other from SLURM's environment, end with identical weights, and the
  workdir holds one run (the chief's checkpoint and export)."""
  del slurm_conf
  config = small_config(tmp_path / "wd", shapes_data_dir, epochs=2, strategy="multi_worker",
                        run_eval=True, save_checkpoints_steps=2)
  proc = subprocess.run(
      ["srun", "--ntasks=2", "--cpus-per-task=1", "--time=10", f"--chdir={REPO_ROOT}",
       f"--output={tmp_path}/task%t.txt", sys.executable, "-c", _RUN,
       json.dumps(config.to_dict())], capture_output=True, text=True, timeout=600)
  outputs = []
  for task in (0, 1):
    with open(tmp_path / f"task{task}.txt") as f:
      outputs.append(f.read())
  assert proc.returncode == 0, proc.stderr[-2000:] + outputs[0][-2000:] + outputs[1][-2000:]
  chief, other = [json.loads(o.strip().splitlines()[-1]) for o in outputs]
  assert chief["step"] == other["step"] == 4
  assert any("2 replica(s)" in l for l in chief["lines"])
  np.testing.assert_allclose(other["weights"], chief["weights"], rtol=1e-6, atol=1e-6)
  assert sorted(os.listdir(config.workdir)) == ["checkpoints", "config.json", "export",
                                               "pretext_results.json", "train"]
  with open(os.path.join(config.export_dir, "export_info.json")) as f:
    assert json.load(f)["step"] == 4


@pytest.mark.slow
def test_cancel_while_attached_cancels_the_jobs_for_good(tmp_path, shapes_data_dir, slurm_root):
  """--cancel cancels the grid's queued and running jobs; the runner attached to them records
  the cells as cancelled and does not resubmit them."""
  grid = _grid(tmp_path, shapes_data_dir, CELLS)
  detached = _benchmark(f"--grid={grid}", f"--root={slurm_root}", "--detach", *POLL)
  assert detached.returncode == 0, detached.stderr[-3000:]
  jobs = {n: e["job_id"] for n, e in _status(slurm_root).items()}
  proc = attached_runner(grid, slurm_root)
  cancel = _benchmark(f"--grid={grid}", f"--root={slurm_root}", "--cancel", *POLL)
  assert cancel.returncode == 0, cancel.stderr
  assert cancel.stdout.strip() == (f"cancelled 4 SLURM job(s): "
                                   f"{', '.join(sorted(jobs.values(), key=int))}")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 1, out
  assert "submitted as SLURM job" not in out and "0/4 done" in out
  status = _status(slurm_root)
  for name, job_id in jobs.items():
    assert status[name]["status"] == "cancelled", status[name]
    assert [(a["job_id"], a["state"]) for a in status[name]["attempts"]] == [
        (job_id, "CANCELLED")]
  assert not [j for j in jobs.values()
              if slurm_cluster.queue()[j]["state"] in slurm_cluster.ACTIVE_STATES]


@pytest.mark.parametrize("table, message", [
    ("partition = \"gpu\"", r"partition = 'gpu' is not a partition of this cluster; "
                            r"partitions: debug, short"),
    ("partition = \"short\"\ntime = \"1:00:00\"",
     r"time = '1:00:00' \(01:00:00\) is over the time limit of partition short, 00:10:00"),
    ("cpus_per_task = 64\ntime = 5", r"sbatch rejects the request \(.*cpus_per_task = 64.*\): "
                                     r".*not available"),
], ids=["unknown_partition", "time_over_the_partitions", "more_cpus_than_a_node"])
def test_bad_settings_fail_before_anything_is_submitted(tmp_path, slurm_root, table, message):
  grid = _grid(tmp_path, "/nowhere", CELLS, slurm_table=table)
  before = set(slurm_cluster.queue())
  proc = _benchmark(f"--grid={grid}", f"--root={slurm_root}", *POLL)
  assert proc.returncode == 2, proc.stdout + proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: [slurm] of cell rotation-vgg19-w1: ")
  assert re.search(message, lines[0]), lines[0]
  assert not set(slurm_cluster.queue()) - before and not os.path.exists(slurm_root)


# ----------------------------------------------------------------------------- without a cluster
def test_no_sbatch_on_path_is_one_line_before_anything_runs(tmp_path):
  grid = _grid(tmp_path, "/nowhere", CELLS)
  root = tmp_path / "root"
  proc = _benchmark(f"--grid={grid}", f"--root={root}", *POLL,
                    env=dict(os.environ, PATH=str(tmp_path)))
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      "error: --executor=slurm: sbatch, squeue, scancel, scontrol not found on PATH; run on a "
      "SLURM login node, or start a one-node cluster on this machine with "
      "scripts/slurm_cluster_start.sh"]
  assert not root.exists()
  proc = _benchmark(f"--grid={grid}", f"--root={root}", "--cancel", *POLL,
                    env=dict(os.environ, PATH=str(tmp_path)))
  assert proc.returncode == 2 and "sbatch, squeue, scancel, scontrol not found" in proc.stderr
  proc = _benchmark(f"--grid={grid}", f"--root={root}", "--detach")
  assert proc.returncode == 2 and "--detach is for --executor=slurm" in proc.stderr
  proc = _benchmark(f"--grid={grid}", f"--root={root}", "--jobs=2", *POLL)
  assert proc.returncode == 2 and "--jobs=2 is for --executor=local" in proc.stderr


@pytest.mark.parametrize("value, minutes", [
    (90, 90), ("90", 90), ("1:30", 2), ("1:30:00", 90), ("2-00:00:00", 2880), ("1-12", 2160),
    ("0-00:10", 10), ("10:00", 10)])
def test_time_limits_in_slurm_formats(value, minutes):
  assert slurm_settings.parse_time(value) == minutes
  assert slurm_settings.parse_time(slurm_settings.format_time(minutes)) == minutes


@pytest.mark.parametrize("value", [0, -5, "", "1h", "1-", "1:2:3:4", True])
def test_bad_time_limits(value):
  with pytest.raises(ValueError):
    slurm_settings.parse_time(value)


@pytest.mark.parametrize("table, message", [
    ("[slurm]\ngpus = 1\n", r"\[slurm\]: unknown key 'gpus'; valid keys: partition, account"),
    ("[slurm]\ntime = \"1h\"\n", r"\[slurm\]: time = '1h': '1h' is not a SLURM time"),
    ("[slurm]\nmem = \"lots\"\n", r"mem = 'lots': sbatch --mem's form"),
    ("[slurm]\nnodes = 0\n", r"nodes = 0: an integer >= 1"),
    ("[slurm]\nextra = { output = \"x\" }\n", r"extra: 'output' is set by the grid runner"),
    ("[slurm]\nsetup = \"module load x\"\n", r"setup = 'module load x': a list of shell lines"),
    ("[[cells]]\nmethod = 'rotation'\nslurm = { max_retries = 1 }\n",
     r"#1 \(method 'rotation'\), slurm: unknown key 'max_retries' \(a grid-wide key: set it in "
     r"\[slurm\]\)"),
])
def test_slurm_section_errors_name_the_key(tmp_path, table, message):
  from grid import gridfile  # pylint: disable=g-import-not-at-top
  path = _write(tmp_path / "bad.toml", "[defaults]\ndataset = 'shapes'\n" + table +
                ("" if "[[cells]]" in table else "[[cells]]\nmethod = 'rotation'\n"))
  with pytest.raises(GridError, match=message):
    gridfile.load_grid(path)


def test_slurm_settings_of_cells_and_their_job_parameters(tmp_path, shapes_data_dir):
  from grid import gridfile  # pylint: disable=g-import-not-at-top
  cells = """
[[cells]]
method = "rotation"
flagfile = "configs/rotation/shapes.flags"
slurm = { nodes = 2, gpus_per_node = 4, time = "2-00:00:00", extra = { constraint = "a100" } }
[[cells]]
method = "supervised"
flagfile = "configs/supervised/shapes.flags"
"""
  grid = gridfile.load_grid(_grid(
      tmp_path, shapes_data_dir, cells,
      slurm_table="partition = \"gpu\"\ncpus_per_task = 8\nmem = \"64g\"\ntime = 600\n"
                  "max_queued = 3\nmax_retries = 1\nsetup = [\"module load cuda\"]"))
  assert grid.slurm == {"max_queued": 3, "max_retries": 1}
  rotation, supervised, baseline = (grid.cell(n) for n in (
      "rotation-vgg19-w1", "supervised-vgg19-w1", "random_init-vgg19-w1"))
  assert supervised.slurm == baseline.slurm == {
      "partition": "gpu", "cpus_per_task": 8, "mem": "64G", "time": 600,
      "setup": ["module load cuda"]}
  assert rotation.slurm == dict(supervised.slurm, nodes=2, gpus_per_node=4, time="2-00:00:00",
                                extra={"constraint": "a100"})
  assert slurm_settings.num_tasks(rotation.slurm) == 2
  # The settings do not change results: the fingerprints are those of the same grid without.
  plain = gridfile.load_grid(_grid(tmp_path, shapes_data_dir, cells.replace("slurm = ", "# "),
                                   slurm_table=""))
  assert rotation.fingerprints() == plain.cell("rotation-vgg19-w1").fingerprints()
  executor = slurm.SlurmExecutor(["python", "train_and_eval.py"], grid.slurm)
  assert (executor.max_queued, executor.max_retries) == (3, 1)
  assert executor.parameters(rotation) == dict(
      job_name="rotation-vgg19-w1", time=2880, nodes=2, ntasks_per_node=1, cpus_per_task=8,
      gpus_per_node=4, mem="64G", partition="gpu", additional_parameters={"constraint": "a100"})
  bare = Cell(name="x", kind="pretext", method="rotation", architecture="vgg19", mode=None,
              width=1, pretext_flags={}, evaluations={}, origin="")
  assert executor.parameters(bare) == dict(job_name="x", nodes=1, ntasks_per_node=1)
