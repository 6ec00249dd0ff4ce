"""The probes at scale, in one run: a synthetic feature store larger than the memory budget is
written to disk, then linear heads train on it and are tested, in a process whose memory is
limited; the same on an in-memory store that fits, for comparison.

  .venv/bin/python bench/probe_store.py                 # 300k x 36k float16 (21.6 GB on disk)
  .venv/bin/python bench/probe_store.py --examples=60000 --features=36000 --budget_gb=2

Rows printed: examples/s of writing the store (what extraction adds to the backbone's time), of
the head training (one epoch of every head of the grid) and of the test pass, the disk read rate
of the head training, and the peak resident memory of the training process against its start
(the runtime) and against the budget. The training process runs with its data segment limited
(RLIMIT_DATA) to its start plus the budget plus --slack_gb, so that a run which held the store in
memory would fail; after the peak is read, the limit is checked to bite by reading the whole
store under it (one layer, where one alone is larger than the limit), which must fail.
tests/test_store.py runs this at small sizes; --json_out keeps the table for docs/performance.md.

The features: `--layers` layers of --features / --layers each, per class a random centre plus
noise, so that the heads have something to learn (their accuracy is printed, as a check).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import runtime  # pylint: disable=g-import-not-at-top
from report.results_page import (  # pylint: disable=g-import-not-at-top
    JSON_OUT_HELP, bench_table, bench_table_text, write_bench_output)

runtime.set_defaults()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _status_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  return 0


def write_store(folder: str, examples: int, features: int, layers: int, classes: int,
                dtype: str, seed: int = 0) -> dict:
  """A synthetic store (module docstring) in `folder`; its writing rate."""
  from eval import store as store_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  dim = features // layers
  centres = rng.normal(size=(classes, dim)).astype(np.float32)
  writer = store_lib.Writer(folder, dict(synthetic=True), dtype, examples)
  start = time.time()
  batch = 1024
  for first in range(0, examples, batch):
    size = min(batch, examples - first)
    labels = rng.integers(0, classes, size=size).astype(np.int32)
    block = {f"layer{i}": centres[labels] * (0.3 * (i + 1)) +
             rng.normal(size=(size, dim)).astype(np.float32) for i in range(layers)}
    writer.write(block, labels)
  writer.finish()
  seconds = time.time() - start
  return dict(write_examples_s=examples / seconds, write_mb_s=examples * features *
              np.dtype(dtype).itemsize / seconds / 1e6, store_gb=examples * features *
              np.dtype(dtype).itemsize / 1e9)


def _limit_bites(store, allowed: int):
  """Whether what the limit is there to refuse fails under it: one whole layer where one alone is
  larger than `allowed` bytes, else the whole store, layer after layer (None where the store
  fits). Run after the peak memory is read: the reads up to the limit raise it."""
  one = store.num_examples * store.row_bytes([store.layers[0]]) > allowed
  if not one and store.num_examples * store.row_bytes() <= allowed:
    return None
  held = []
  try:
    for name in store.layers[:1] if one else store.layers:
      held.append(store.read(name, slice(0, store.num_examples)))
    return False
  except MemoryError:
    return True
  finally:
    del held[:]


def train(folder: str, args) -> dict:
  """Heads trained and tested on the store in `folder` (or in memory, `args.in_memory`), under
  the memory limit; run in a child process."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top,unused-import
  from eval import heads as heads_lib  # pylint: disable=g-import-not-at-top
  from eval import probing  # pylint: disable=g-import-not-at-top
  from eval import store as store_lib  # pylint: disable=g-import-not-at-top
  tf.constant(0.0) + 1.0  # The runtime up before the start is read.
  store = store_lib.open_store(folder, ())
  budget = int(args.budget_gb * 2**30)
  start_kib = _status_kib("VmRSS")
  limited = None
  if args.limit:
    limited = _status_kib("VmData") * 1024 + budget + int(args.slack_gb * 2**30)
    if args.in_memory:
      limited += store.num_examples * store.row_bytes()
    resource.setrlimit(resource.RLIMIT_DATA, (limited, limited))
  if args.in_memory:
    store = store_lib.MemoryStore({n: store.read_all(n) for n in store.layers}, store.labels)
  rows = np.arange(store.num_examples)
  config = types.SimpleNamespace(
      eval_model="linear", channels_hidden=1, batch_size=args.batch_size, eval_batch_size=1024,
      lr_scale_batch_size=256, epochs=args.epochs, warmup_epochs=0.0, decay_epochs=(),
      lr_decay_factor=0.1, lr_schedule="cosine", standardize_features=True, random_seed=0,
      probe_lrs=(0.03, 0.3), probe_weight_decays=(0.0, 1e-4),
      probe_decorrelate=not args.no_decorrelate)
  plan = probing.reading(config, store.dims, store.dtype.itemsize, args.classes, budget)
  grid = probing.settings_of(config)
  test_rows = rows[:args.test_examples]
  start = time.time()
  metrics = probing.fit_and_test(config, store, rows, {"test": (store, test_rows)},
                                 {n: grid for n in store.layers}, args.classes, budget,
                                 "bench")["test"]
  seconds = time.time() - start
  usage = resource.getrusage(resource.RUSAGE_SELF)  # The peak, before the check below.
  bites = None
  if limited and not args.in_memory:
    bites = _limit_bites(store, budget + int(args.slack_gb * 2**30))
  steps = heads_lib.num_train_steps(args.epochs, heads_lib.steps_per_epoch(len(rows),
                                                                           args.batch_size))
  trained = steps * args.batch_size
  read = (trained + len(test_rows) * len(plan.groups)) * store.row_bytes() + (
      store.num_examples * store.row_bytes())  # Batches, tests, and the statistics' pass.
  return dict(groups=len(plan.groups), limit_bites=bites, steps_per_call=plan.steps_per_call,
              train_examples_s=trained / seconds, read_mb_s=read / seconds / 1e6,
              start_rss_gb=start_kib / 2**20, peak_rss_gb=usage.ru_maxrss / 2**20,
              limit_gb=None if limited is None else limited / 2**30,
              top1=float(np.mean([max(s["top1"] for s in m) for m in metrics.values()])),
              seconds=seconds)


def run_child(folder: str, argv) -> dict:
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--_child={folder}"] + argv,
                        cwd=REPO_ROOT, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"the training process exited with {proc.returncode}:\n"
                       f"{proc.stderr[-3000:]}")
  return json.loads(lines[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--examples", type=int, default=300_000)
  parser.add_argument("--features", type=int, default=36_000)
  parser.add_argument("--layers", type=int, default=4)
  parser.add_argument("--classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float16")
  parser.add_argument("--budget_gb", type=float, default=4.0)
  parser.add_argument("--slack_gb", type=float, default=0.5,
                      help="beyond the budget, for the runtime's own growth (traces, threads)")
  parser.add_argument("--epochs", type=float, default=1.0)
  parser.add_argument("--batch_size", type=int, default=1024)
  parser.add_argument("--test_examples", type=int, default=10_000)
  parser.add_argument("--memory_examples", type=int, default=0,
                      help="examples of the in-memory comparison (default: what fits the "
                           "budget; 0 left out with --no_memory)")
  parser.add_argument("--no_memory", action="store_true", help="skip the in-memory comparison")
  parser.add_argument("--no_decorrelate", action="store_true",
                      help="standardised features only (the covariance of a layer of D features "
                      "costs about 36 D^2 bytes of the budget)")
  parser.add_argument("--dir", default=None, help="where to write the store (default: a "
                      "temporary folder)")
  parser.add_argument("--json", action="store_true", help="print the results as one JSON line")
  parser.add_argument("--json_out", default="", help=JSON_OUT_HELP)
  parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--in_memory", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--limit", action="store_true", help=argparse.SUPPRESS)
  args, rest = parser.parse_known_args()
  if args._child:  # pylint: disable=protected-access
    print(json.dumps(train(args._child, args)))  # pylint: disable=protected-access
    return
  shared = [f"--budget_gb={args.budget_gb}", f"--slack_gb={args.slack_gb}",
            f"--epochs={args.epochs}", f"--batch_size={args.batch_size}",
            f"--classes={args.classes}", f"--test_examples={args.test_examples}", "--limit"] + (
                ["--no_decorrelate"] if args.no_decorrelate else []) + rest
  with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
    results = {}
    disk = os.path.join(tmp, "disk")
    results["disk"] = dict(write_store(disk, args.examples, args.features, args.layers,
                                       args.classes, args.dtype),
                           **run_child(disk, shared))
    if not args.no_memory:
      row = args.features * np.dtype(args.dtype).itemsize
      small = args.memory_examples or max(1000, int(0.5 * args.budget_gb * 2**30 / row))
      mem = os.path.join(tmp, "memory")
      # As many training steps as on the disk store.
      epochs = args.epochs * args.examples / small
      results["memory"] = dict(write_store(mem, small, args.features, args.layers, args.classes,
                                           args.dtype, seed=1),
                               **run_child(mem, shared + ["--in_memory", f"--epochs={epochs}"]))
  if args.json:
    print(json.dumps(results))
    return
  if results["disk"]["limit_bites"] is False:
    print("warning: the whole store was read under the memory limit: it does not bite")
  rows = []
  for name, r in results.items():
    examples = args.examples if name == "disk" else int(r["store_gb"] * 1e9 / (
        args.features * np.dtype(args.dtype).itemsize))
    rows.append(("on disk" if name == "disk" else "in memory (fits)", f"{examples:,}",
                 f"{r['store_gb']:.1f}", f"{r['write_examples_s']:,.0f}",
                 f"{r['train_examples_s']:,.0f}", f"{r['read_mb_s']:,.0f}", r["groups"],
                 f"{r['start_rss_gb']:.2f}",
                 f"{r['peak_rss_gb'] - r['start_rss_gb']:.2f} "
                 f"({(r['peak_rss_gb'] - r['start_rss_gb']) / args.budget_gb:.2f})",
                 f"{100 * r['top1']:.1f}"))
  bites = results["disk"]["limit_bites"]
  notes = ["The limit bites: reading the whole store (or one layer, where one alone is larger) "
           "under it failed, as it must." if bites else
           "Not checked: the store fits under the limit." if bites is None else
           "The limit does not bite: the whole store was read under it."]
  if "memory" in results:
    ratio = results["disk"]["train_examples_s"] / results["memory"]["train_examples_s"]
    notes.append(f"Training rate, the store on disk against in memory: {ratio:.2f}x.")
  table = bench_table(
      f"Heads from a feature store: {args.layers} layers of {args.features // args.layers:,} "
      f"features ({args.dtype}), {args.classes} classes, 4 heads per layer, "
      f"{args.epochs:g} epoch(s), a budget of {args.budget_gb:g} GiB",
      ("store", "examples", "GB", "write examples/s", "training examples/s", "read MB/s",
       "layer groups", "start GiB", "peak - start GiB (of the budget)", "top-1 (%)"), rows, notes)
  print(bench_table_text(table))
  if args.json_out:
    from training import run_record  # pylint: disable=g-import-not-at-top
    write_bench_output(args.json_out, "bench/probe_store.py", [table],
                       run_record.record(random_seed=0))
    print(f"wrote {args.json_out}")


if __name__ == "__main__":
  main()
