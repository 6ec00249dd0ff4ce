"""Stopping on a signal loses nothing: SIGTERM or SIGINT during training saves a checkpoint at the
step it arrives at and exits within seconds with one line; the same command resumes from that
very step, in a single run and in a grid cell (on SLURM: tests/test_slurm.py); a second SIGINT
exits at once; outside training a signal ends the process at once, with the same one line."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core import interrupts
from tests.conftest import REPO_ROOT
from tests.test_grid_end_to_end import _ctrl_c_interrupts

# About 0.5 s per 10 steps here: long enough to be stopped in the middle.
TRAIN = ["--task=rotation", "--preprocessing=resize,-1_to_1,rotate", "--resize_size=32",
         "--architecture=vgg19", "--filters_factor=1", "--batch_size=8", "--lr_scale_batch_size=8",
         "--dataset=shapes_small", "--train_split=train[:800]", "--epochs=20",
         "--log_every_steps=10", "--save_checkpoints_secs=100000"]


def _start(args, **kwargs):
  return subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)


def _read_until(proc, pattern, lines, timeout=180):
  """Output lines up to the first that matches `pattern` (the process's output so far)."""
  deadline = time.time() + timeout
  for line in proc.stdout:
    lines.append(line.rstrip("\n"))
    if re.search(pattern, line):
      return lines[-1]
    assert time.time() < deadline, lines[-20:]
  raise AssertionError(f"no line matching {pattern!r}: {lines[-20:]}")


def _checkpoint_steps(workdir):
  return sorted(int(n[len("ckpt-"):-len(".index")])
                for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.endswith(".index"))


def test_sigterm_saves_the_step_it_arrives_at_and_the_same_command_resumes_there(
    tmp_path, shapes_data_dir):
  workdir = str(tmp_path / "wd")
  args = ["train_and_eval.py", *TRAIN, f"--data_dir={shapes_data_dir}", f"--workdir={workdir}"]
  proc = _start(args)
  lines = []
  _read_until(proc, r"^step 20/2000 ", lines)
  # The first speed and ETA leave out the first step, which traces the step function (seconds):
  # it is about the next one's, not a fraction of it.
  rates = [float(re.search(r"\| (\d+) img/s \|", l).group(1)) for l in lines
           if l.startswith("step ")]
  assert rates[0] > 0.5 * rates[1], lines
  os.killpg(proc.pid, signal.SIGTERM)
  sent = time.time()
  out, _ = proc.communicate(timeout=60)
  took = time.time() - sent
  lines += out.splitlines()
  assert proc.returncode == 128 + signal.SIGTERM, lines[-10:]
  assert took < 10, took
  match = re.fullmatch(r"interrupted by SIGTERM at step (\d+) of 2000: saved (\S+)/ckpt-(\d+); "
                       r"the same command resumes from there", lines[-1])
  assert match, lines[-5:]
  step = int(match.group(1))
  assert 20 <= step < 2000 and int(match.group(3)) == step
  assert _checkpoint_steps(workdir) == [step]  # No periodic checkpoint: this one alone.
  assert not any("Traceback" in l for l in lines)
  # No INFO lines of TensorFlow or TFDS by default (they are there with --verbose).
  assert not [l for l in lines if re.match(r"^I\d{4} ", l) and "dataset_info.py" in l]

  proc = _start(args + ["--verbose"])
  resumed = []
  restored = _read_until(proc, r"^restored ", resumed)
  _read_until(proc, r"^step \d+/2000 ", resumed)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.communicate()
  assert restored == f"restored {workdir}/checkpoints/ckpt-{step} at step {step}"
  assert any(f"from step {step} to 2000" in l for l in resumed)
  assert any("dataset_info.py" in l for l in resumed)  # --verbose: TFDS's INFO lines.


_TWICE = textwrap.dedent("""
    import os, signal, time
    from core import interrupts
    with interrupts.StopOnSignal() as stop:
      with stop.saving():
        os.kill(os.getpid(), signal.SIGINT)  # Asks to stop: the loop would save, then stop.
        print("asked", flush=True)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: out at once.
        time.sleep(5)
        print("not reached", flush=True)
    """)


def test_a_second_sigint_exits_at_once_without_saving():
  proc = subprocess.run([sys.executable, "-c", _TWICE], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=30)
  assert proc.returncode == 128 + signal.SIGINT
  assert proc.stdout.splitlines() == ["asked"]
  assert [l for l in proc.stderr.splitlines() if l][-2:] == [
      "SIGINT: saving a checkpoint at the current step, then stopping (Ctrl-C again to exit at "
      "once, without saving)", "SIGINT again: exiting at once, without saving"]


_OUTSIDE = textwrap.dedent("""
    import os, signal, sys, time
    from core import interrupts
    with interrupts.StopOnSignal(lambda s: f"stopped by {interrupts.signal_name(s)}") as stop:
      with stop.saving():
        os.kill(os.getpid(), signal.SIGUSR2)  # Inside: only asks.
        assert stop.requested == signal.SIGUSR2
        os.kill(os.getpid(), signal.SIGTERM)  # Stopping already: ignored.
        print("polled", stop.requested, flush=True)
        try:
          stop.check("at step 7")
        except interrupts.Interrupted as e:
          print(e, flush=True)
        stop.requested = None  # Handled here, as the entry point would.
      print("outside", flush=True)
      os.kill(os.getpid(), signal.SIGTERM)  # Outside: the process ends at once.
      time.sleep(5)
      print("not reached", flush=True)
    """)


def test_outside_saving_a_signal_ends_the_process_with_its_line():
  proc = subprocess.run([sys.executable, "-c", _OUTSIDE], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=30)
  assert proc.stdout.splitlines() == [f"polled {int(signal.SIGUSR2)}",
                                      "interrupted by SIGUSR2 at step 7", "outside"]
  assert proc.stderr.splitlines()[-1] == "stopped by SIGTERM"
  assert proc.returncode == 128 + signal.SIGTERM == interrupts.exit_code(signal.SIGTERM)
  assert interrupts.stopped_by_signal(proc.returncode) and interrupts.stopped_by_signal(-9)
  assert not interrupts.stopped_by_signal(1) and not interrupts.stopped_by_signal(None)


GRID = """
[defaults]
dataset = "shapes_small"
data_dir = "{data_dir}"
[pretext]
preprocessing = "resize,-1_to_1,rotate"
train_split = "train[:800]"
epochs = 20
log_every_steps = 10
save_checkpoints_secs = 100000
run_eval = false
[evaluation]
flagfile = "configs/evaluation/shapes.flags"
train_split = "train[:64]"
val_split = "test[:32]"
[[cells]]
method = "rotation"
flagfile = "configs/rotation/shapes.flags"
flags = {{ architecture = "vgg19", filters_factor = 1, batch_size = 8, lr_scale_batch_size = 8 }}
"""


@pytest.mark.slow
def test_a_grid_cell_stopped_with_ctrl_c_resumes_from_the_step_it_was_at(tmp_path,
                                                                         shapes_data_dir):
  """Ctrl-C (SIGINT to the terminal's process group: the runner and the step): the step saves
  the step it is at, the runner records the cell as interrupted; the same command goes on from
  that step."""
  grid = tmp_path / "grid.toml"
  grid.write_text(GRID.format(data_dir=shapes_data_dir))
  root = tmp_path / "root"
  log = root / "rotation-vgg19-w1" / "log.txt"
  args = ["benchmark.py", f"--grid={grid}", f"--root={root}", "--noreport"]
  proc = _start(args, preexec_fn=_ctrl_c_interrupts)
  deadline = time.time() + 180
  while not (log.exists() and re.search(r"^step [2-9]0/2000 ", log.read_text(), re.M)):
    assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-2000:]
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGINT)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 130, out[-2000:]
  assert "rotation-vgg19-w1: interrupted; run the same command again to resume" in out
  text = log.read_text()
  step = int(re.search(r"^interrupted by SIGINT at step (\d+) of 2000: saved ", text,
                       re.M).group(1))
  proc = _start(args, preexec_fn=_ctrl_c_interrupts)
  deadline = time.time() + 180
  while "restored " not in log.read_text():
    assert time.time() < deadline and proc.poll() is None, proc.communicate()[0][-2000:]
    time.sleep(0.2)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.communicate()
  restored = re.search(r"^restored \S+/ckpt-(\d+) at step (\d+)$", log.read_text(), re.M)
  assert int(restored.group(1)) == int(restored.group(2)) == step
