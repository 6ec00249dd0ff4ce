"""README.md's commands run as written. Every command of its `bash` blocks (those on the embedded
data, the photographs and the ImageNet-shaped set; blocks that need a cluster, a GPU or a file of
your own are `sh`) runs here in its order, with a tiny budget added after its own flags: pretext
runs train a few steps, probes and fine-tuning read a few hundred images, grids run as smoke
runs. Paths under workdirs/ go to a temporary folder, TFDS data too."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from core import options
from tests.conftest import REPO_ROOT

README = os.path.join(REPO_ROOT, "README.md")
BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
PYTHON = ".venv/bin/python"
# The budgets, by the kind of command: flags added after the command's own (the last wins).
PRETEXT = ("--epochs=1", "--train_split=train[:256]", "--batch_size=32", "--val_split=test[:64]")
PROBES = ("--train_split=train[:256]", "--val_split=test[:128]", "--epochs=2")
FINE_TUNE = ("--epochs=1", "--val_split=test[:128]")
CKA = ("--val_split=test[:200]",)


def readme_commands():
  """The commands of README.md's bash blocks, in order, as argument lists."""
  with open(README) as f:
    text = f.read()
  commands = []
  for block in BLOCK.findall(text):
    for line in block.replace("\\\n", " ").splitlines():
      args = shlex.split(line, comments=True)
      if args:
        commands.append(args)
  return commands


def flag(args, name):
  """The value of --name in `args` (the last one), or None."""
  values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
  return values[-1] if values else None


def budget(args, tmp):
  """`args` with the tiny budget of its kind, run from REPO_ROOT with paths under `tmp`."""
  if args[0] != PYTHON:
    raise AssertionError(f"README command {shlex.join(args)}: bash blocks hold commands of "
                         f"{PYTHON} (put others in an sh block)")
  program, rest = args[1], [a.replace("workdirs/", f"{tmp}/workdirs/") for a in args[2:]]
  if program == "train_and_eval.py":
    flagfile = flag(rest, "flagfile") or ""
    task = flag(rest, "task")
    if task == "cka":
      extra = CKA
    elif "configs/fine_tune/" in flagfile:
      extra = FINE_TUNE
    elif task in options.EVALUATION_TASKS or "configs/evaluation/" in flagfile:
      extra = PROBES
    else:
      extra = PRETEXT
  elif program == "benchmark.py":
    name = os.path.splitext(os.path.basename(flag(rest, "grid")))[0]
    extra = () if flag(rest, "root") else (f"--root={tmp}/workdirs/grid_{name}",)
    if not any(a in rest for a in ("--list", "--report_only", "--plan", "--smoke")):
      extra += ("--smoke",)
  elif program == "scripts/prepare_photos.py":
    extra = () if flag(rest, "out") else (f"--out={tmp}/workdirs/photos",)
  elif program == "scripts/prepare_imagenet_like.py":
    extra = () if flag(rest, "data_dir") else (f"--data_dir={tmp}/workdirs/imagenet_like",)
  else:
    raise AssertionError(f"README command {shlex.join(args)}: no tiny budget known for "
                         f"{program}; add one here")
  return [sys.executable, program] + rest + list(extra)


def test_the_readme_holds_the_recipes_it_promises():
  """The set-up commands first; every common task's commands within the first 150 lines; at
  most about 250 lines; no measurement tables (those are in docs/)."""
  with open(README) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 250
  assert lines[3:5] == [
      "make demo   # set-up, then the main job: the embedded benchmark grid and its per-layer "
      "report",
      "make test   # set-up, then the test suite less its slow tests (about 15 minutes on 2 CPU "
      "cores)"]
  first = "\n".join(lines[:150])
  for needed in ("benchmark.py --grid=configs/grids/shapes.toml",   # the demo
                 "--flagfile=configs/rotation/shapes.flags",         # one method
                 "--dataset=folder:",                                 # your own images
                 "--hub_module=workdirs/rot/export",                  # probing an export
                 "scripts/adapt_model.py",                            # a published model
                 "[[cells]]",                                         # a grid of your own
                 "--executor=slurm --plan",                           # the paper's grids
                 "docs/DESIGN.md"):                                   # adding a method
    assert needed in first, needed
  assert not [l for l in lines if re.match(r"^\|.*\d+\.\d", l)], "a table of numbers"
  commands = readme_commands()
  assert len(commands) >= 15
  assert all(c[0] == PYTHON for c in commands)


@pytest.mark.slow
def test_every_readme_command_runs_on_the_embedded_data(tmp_path):
  env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / "tfds"))
  for args in readme_commands():
    command = budget(args, tmp_path)
    proc = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (shlex.join(command), proc.stdout[-3000:],
                                  proc.stderr[-3000:])
  # What the recipes promise is there: the probes of the export, the grid's report.
  assert os.path.isfile(tmp_path / "workdirs" / "rot" / "linear_eval" / "results.json")
  assert os.path.isfile(tmp_path / "workdirs" / "cka_rot" / "cka.json")
  assert os.path.isfile(tmp_path / "workdirs" / "grid_shapes" / "report" / "report.md")
