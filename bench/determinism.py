"""What --deterministic costs: the training speed of a pretext flagfile with and without it.

  .venv/bin/python bench/determinism.py              # rotation, configs/rotation/shapes.flags
  .venv/bin/python bench/determinism.py --flagfile=configs/simclr/shapes.flags --epochs=0.1
  .venv/bin/python bench/determinism.py \
      --flagfile=configs/rotation/shapes.flags,configs/simclr/shapes.flags --json_out=<file>

Runs train_and_eval.py twice in turn on the same machine, each in a fresh process (op
determinism is a process-wide switch that cannot be turned off), for --epochs of the flagfile,
and prints the images/s each reached (the trainer's own figure, which leaves out the first call
that traces the step) and their ratio; --json_out keeps the table as a bench output for
docs/performance.md (scripts/write_results.py --add). Both runs also print their first losses: with
--deterministic, a second run of the same command would print the same ones.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from report.results_page import (  # pylint: disable=g-import-not-at-top
    JSON_OUT_HELP, bench_table, bench_table_text, write_bench_output)


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
  parser.add_argument("--flagfile", default="configs/rotation/shapes.flags",
                      help="one pretext flagfile, or several (comma-separated)")
  parser.add_argument("--epochs", type=float, default=0.2,
                      help="of the flagfile's training set, per run")
  parser.add_argument("--data_dir", default="", help="TFDS data directory (default: TFDS's)")
  parser.add_argument("--json_out", default="", help=JSON_OUT_HELP)
  args = parser.parse_args()
  flagfiles = [f for f in args.flagfile.split(",") if f]
  for flagfile in flagfiles:  # Every one, before any work.
    if not os.path.isfile(os.path.join(REPO_ROOT, flagfile)):
      parser.error(f"--flagfile: {flagfile} is not a file (e.g. configs/rotation/shapes.flags)")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for i, flagfile in enumerate(flagfiles):
      rates = {}
      for deterministic in (False, True):
        rate, lines = train(flagfile, args.epochs, deterministic,
                            os.path.join(tmp, f"{i}_det{int(deterministic)}"), args.data_dir)
        rates[deterministic] = rate
        print(f"{flagfile} --{'' if deterministic else 'no'}deterministic: {rate:.0f} images/s; "
              f"first losses: {' | '.join(l.split(' lr ')[0].split(') ')[1] for l in lines[:2])}",
              flush=True)
      rows.append((flagfile, f"{rates[False]:.0f}", f"{rates[True]:.0f}",
                   f"{rates[True] / rates[False]:.2f}x"))
  table = bench_table(
      f"--deterministic against the default: training images/s over {args.epochs:g} epoch of "
      "each flagfile, the two runs in turn in fresh processes",
      ("flagfile", "default", "--deterministic", "ratio"), rows,
      ["The trainer's own figure at its last progress line (the first call, which traces the "
       "step, left out)."])
  print(bench_table_text(table))
  if args.json_out:
    from core import runtime  # pylint: disable=g-import-not-at-top
    runtime.set_defaults()  # The run record's settings are the children's.
    from training import run_record  # pylint: disable=g-import-not-at-top
    write_bench_output(args.json_out, "bench/determinism.py", [table],
                       run_record.record(random_seed=0))
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
  main()
