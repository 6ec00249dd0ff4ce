"""The plan's estimates against real runs, in one run: the peak resident memory of pretext runs
and of cached per-layer probes (the kernel's, from os.wait4), each at two sizes so that what does
not grow with them (the runtime, the model) cancels out, next to what training/footprint.py and
eval/linear_eval.footprint estimate for the same commands.

  .venv/bin/python bench/footprint.py [--data_dir=DIR] [--json_out=FILE]  # ~5 minutes, 2 cores

Prints one row per case: the growth measured, the growth estimated, their ratio and, for training,
the measured growth per image (the same network in float32 and in mixed_bfloat16: what the
precision saves); the probes: their features' growth on disk, which their memory should not
follow. tests/test_footprint.py runs the same cases and holds each within 25%; --json_out keeps
the table for docs/performance.md.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent import futures

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import runtime  # pylint: disable=g-import-not-at-top
from report.results_page import (  # pylint: disable=g-import-not-at-top
    JSON_OUT_HELP, bench_table, bench_table_text, write_bench_output)

runtime.set_defaults()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETEXT = ["--flagfile=configs/rotation/shapes.flags", "--resize_size=64", "--norun_eval",
           "--epochs=0.01", "--filters_factor=1"]
PROBE = ["--flagfile=configs/evaluation/shapes.flags", "--hub_module=random_init",
         "--architecture=resnet50", "--filters_factor=1", "--eval_preprocessing=-1_to_1",
         "--val_split=test[:500]", "--epochs=1", "--feature_cache=keep", "--probe_memory_gb=0.5",
         "--noprobe_decorrelate"]
# name -> (the flags of both runs, {size: its own flags}): two pretext runs 256 examples apart
# (x 4 rotations: 1024 images); two probes on 2000 and 8000 training images, their features in a
# store on disk and their budget 0.5 GiB: their peaks should not grow with the examples (the
# features standardised only: the decorrelation's covariance, 36 D^2 bytes for a layer of D
# features whatever the examples, would not fit that budget at block1's 6400; tests/test_store.py
# runs the decorrelated heads under a memory limit).
CASES = {
    "training resnet50_v1 w1 float32": (
        PRETEXT + ["--architecture=resnet50", "--mode=v1"],
        {32: ["--batch_size=32"], 288: ["--batch_size=288"]}),
    "training resnet50_v1 w1 mixed_bfloat16": (
        PRETEXT + ["--architecture=resnet50", "--mode=v1", "--precision=mixed_bfloat16"],
        {32: ["--batch_size=32"], 288: ["--batch_size=288"]}),
    "training vgg19 w1 float32": (
        PRETEXT + ["--architecture=vgg19"],
        {32: ["--batch_size=32"], 288: ["--batch_size=288"]}),
    "cached probes resnet50 w1": (
        PROBE, {2000: ["--train_split=train[:2000]"], 8000: ["--train_split=train[:8000]"]}),
}


# Runs a command as its child and reports the child's peak RSS. A child forked from a large
# process (a test session) carries that process's pages until it executes its program, and the
# kernel counts them in its peak; forked from this small one, it carries a few MB.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
  os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\npeak_rss_kib={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(args, data_dir):
  """(exit code, peak resident bytes, stderr's tail) of one train_and_eval.py with `args`."""
  proc = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, "train_and_eval.py",
                         *args, f"--data_dir={data_dir}"], cwd=REPO_ROOT,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
  peak = [line for line in proc.stderr.splitlines() if line.startswith("peak_rss_kib=")]
  kib = int(peak[-1].split("=")[1]) if peak else 0
  return proc.returncode, kib * 1024, proc.stderr[-3000:]


def estimate(args, data_dir):
  """The estimate (training/footprint.Step) of train_and_eval.py with `args`."""
  import train_and_eval  # pylint: disable=g-import-not-at-top
  return train_and_eval.footprint(train_and_eval._entry_values(  # pylint: disable=protected-access
      list(args) + [f"--data_dir={data_dir}"]))


def measure(case: str, data_dir: str, workdir: str):
  """{size: (estimate, peak bytes)} of the case's two runs (run two at a time); RuntimeError
  naming the run that failed. The runs write into `workdir`/<size>."""
  import datasets  # pylint: disable=g-import-not-at-top
  common, sizes = CASES[case]
  commands = {n: common + extra + [f"--workdir={os.path.join(workdir, str(n))}"]
              for n, extra in sizes.items()}
  datasets.get_dataset_info("shapes", data_dir)  # Prepared here, not in a measured run.
  with futures.ThreadPoolExecutor(2) as pool:
    done = dict(zip(commands, pool.map(lambda n: peak_rss(commands[n], data_dir), commands)))
  for n, (code, _, stderr) in done.items():
    if code:
      raise RuntimeError(f"{case}, size {n}: exit {code}\n{stderr}")
  return {n: (estimate(commands[n], data_dir), done[n][1]) for n in commands}


def growth(case: str, results) -> tuple:
  """(measured, estimated) growth in bytes from the smaller run to the larger: host memory for
  the probes (whose features grow on disk: `disk_bytes`), the device's (the host's on a CPU) for
  training."""
  (small, small_peak), (large, large_peak) = (results[n] for n in sorted(results))
  field = "host_bytes" if case.startswith("cached probes") else "device_bytes"
  return large_peak - small_peak, getattr(large, field) - getattr(small, field)


def feature_growth(results) -> int:
  """The growth of the probes' features (on disk) from the smaller run to the larger."""
  (small, _), (large, _) = (results[n] for n in sorted(results))
  return large.disk_bytes - small.disk_bytes


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--data_dir", default=None, help="TFDS data dir for the embedded shapes set "
                      "(default: a temporary one, prepared first)")
  parser.add_argument("--json_out", default="", help=JSON_OUT_HELP)
  args = parser.parse_args()
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or os.path.join(tmp, "tfds")
    for case in CASES:
      workdir = os.path.join(tmp, case.replace(" ", "_"))
      results = measure(case, data_dir, workdir)
      measured, estimated = growth(case, results)
      small, large = sorted(results)
      if case.startswith("cached probes"):
        rows.append([f"{case}, {small} -> {large} training images", f"{measured / 2**20:.0f}",
                     f"{estimated / 2**20:.0f}", "-",
                     f"features grew {feature_growth(results) / 2**20:.0f} MiB on disk"])
        continue
      images = (large - small) * 4  # The rotation flagfile's four rotations of each example.
      rows.append([f"{case}, batch {small} -> {large}", f"{measured / 2**20:.0f}",
                   f"{estimated / 2**20:.0f}", f"{estimated / measured:.2f}",
                   f"{measured / images / 2**20:.2f} MiB per image"])
  table = bench_table(
      "Peak resident memory: its growth between two runs of each case, measured (the kernel's "
      "peak) and as the plan estimates it (rotation at 64x64, four rotations per example)",
      ["case", "measured growth MiB", "estimated MiB", "estimate / measured", "per image"], rows,
      notes=["tests/test_footprint.py holds each estimate within 25% of the measurement; the "
             "probes' memory should not grow with their features, which are on disk."])
  print(bench_table_text(table))
  if args.json_out:
    from training import run_record  # pylint: disable=g-import-not-at-top
    write_bench_output(args.json_out, "bench/footprint.py", [table],
                       run_record.record(random_seed=0))
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
  main()
