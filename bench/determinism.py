"""What --deterministic costs: the training speed of a pretext flagfile with and without it.

  .venv/bin/python bench/determinism.py              # rotation, configs/rotation/shapes.flags
  .venv/bin/python bench/determinism.py --flagfile=configs/simclr/shapes.flags --epochs=0.1

Runs train_and_eval.py twice in turn on the same machine, each in a fresh process (op
determinism is a process-wide switch that cannot be turned off), for --epochs of the flagfile,
and prints the images/s each reached (the trainer's own figure, which leaves out the first call
that traces the step) and their ratio. Both runs also print their first losses: with
--deterministic, a second run of the same command would print the same ones.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(flagfile: str, epochs: float, deterministic: bool, workdir: str, data_dir: str):
  """(images/s at the last progress line, the progress lines) of one training run."""
  argv = [sys.executable, os.path.join(REPO_ROOT, "train_and_eval.py"), f"--flagfile={flagfile}",
          f"--epochs={epochs}", "--warmup_epochs=0", "--decay_epochs=", "--norun_eval",
          f"--workdir={workdir}", "--log_every_steps=25", "--save_checkpoints_secs=100000",
          "--deterministic" if deterministic else "--nodeterministic"]
  if data_dir:
    argv.append(f"--data_dir={data_dir}")
  proc = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True)
  if proc.returncode != 0:
    sys.exit(f"training failed ({' '.join(argv)}):\n{proc.stderr[-3000:]}")
  lines = [l for l in proc.stdout.splitlines() if l.startswith("step ")]
  rates = [float(m.group(1)) for l in lines for m in [re.search(r"\| (\d+) img/s", l)] if m]
  if not rates:
    sys.exit(f"no progress lines in the output of {' '.join(argv)}")
  return rates[-1], lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--flagfile", default="configs/rotation/shapes.flags")
  parser.add_argument("--epochs", type=float, default=0.2,
                      help="of the flagfile's training set, per run")
  parser.add_argument("--data_dir", default="", help="TFDS data directory (default: TFDS's)")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    results = {}
    for deterministic in (False, True):
      rate, lines = train(args.flagfile, args.epochs, deterministic,
                          os.path.join(tmp, f"det{int(deterministic)}"), args.data_dir)
      results[deterministic] = rate
      print(f"--{'' if deterministic else 'no'}deterministic: {rate:.0f} images/s; first "
            f"losses: {' | '.join(l.split(' lr ')[0].split(') ')[1] for l in lines[:2])}")
  print(f"{args.flagfile}: --deterministic trains at {results[True] / results[False]:.2f}x the "
        "speed of the default")


if __name__ == "__main__":
  main()
