"""The suite's per-layer linear probes against a fitted reference, on the same stored features:
scikit-learn's multinomial logistic regression (L-BFGS), its regularisation chosen on the same
held-out minival from the same grid of weight decays (C = 1 / (weight decay x examples): the same
objective as the heads'), fitted on the same training rows (the split less the minival) and tested
on the same test rows, the features standardised with the same rows' statistics.

  .venv/bin/python train_and_eval.py --flagfile=configs/evaluation/shapes.flags \\
      --hub_module=<export> --train_split='train[:3000]' --val_split='test[:5000]' \\
      --workdir=<dir> --feature_cache=keep
  .venv/bin/python bench/probes_vs_sklearn.py --results=<dir>/results.json [--json_out=<file>]

Prints per layer: the suite's top-1 and chosen decay, the reference's, their difference, and the
difference from the reference at the suite's decay (the fit alone, without the choice's ties);
one table per results.json of --results (comma-separated); --json_out keeps them as a bench output
for docs/results.md (scripts/write_results.py --add).
tests/test_probes_vs_sklearn.py runs the same comparison on a small random-init backbone. On
1000 test images two classifiers this close differ by about half a point by chance (docs/probes.md).
"""

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Dict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from eval import heads  # pylint: disable=g-import-not-at-top
from eval import probing  # pylint: disable=g-import-not-at-top
from eval import store as store_lib  # pylint: disable=g-import-not-at-top
from report.results_page import (  # pylint: disable=g-import-not-at-top
    JSON_OUT_HELP, bench_table, bench_table_text, export_label, write_bench_output)

MAX_ITER = 3000


def reference(train: store_lib.Store, test: store_lib.Store, layers, weight_decays, seed: int,
              max_iter: int = MAX_ITER):
  """Per layer: (test top-1, chosen decay, every decay's minival top-1, every decay's test top-1)
  of the reference, fitted on the suite's training rows less its minival, as the heads are."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  rows = np.arange(train.num_examples)
  fit, held = heads.minival_split(rows, probing.MINIVAL_FRACTION, probing.MINIVAL_MAX, seed)
  out = {}
  for name in layers:
    x, x_test = train.read_all(name).astype(np.float64), test.read_all(name).astype(np.float64)

    def standardised(part, *others, x=x):
      mean, std = x[part].mean(0), x[part].std(0)
      std[std <= 1e-6 * (1 + np.abs(mean))] = np.inf  # Constant: zeroed, as the heads do.
      return [(o - mean) / std for o in others]

    def model(part, decay):
      if decay == 0:
        return LogisticRegression(penalty=None, max_iter=max_iter)
      return LogisticRegression(C=1.0 / (decay * len(part)), max_iter=max_iter)

    with warnings.catch_warnings():  # Unregularised fits of separable rows do not converge.
      warnings.simplefilter("ignore")
      x_fit, x_held, x_t = standardised(fit, x[fit], x[held], x_test)
      models = [model(fit, d).fit(x_fit, train.labels[fit]) for d in weight_decays]
    held_out = [float(m.score(x_held, train.labels[held])) for m in models]
    tests = [float(m.score(x_t, test.labels)) for m in models]
    choice = int(np.argmax(held_out))
    out[name] = (tests[choice], weight_decays[choice], held_out, tests)
  return out


def stores_of(results) -> tuple:
  """The (train, test) stores a results.json's evaluation read, from its feature cache."""
  config = results["config"]
  cache = config.get("feature_cache_dir") or os.path.join(config["workdir"], "feature_cache")
  found = {}
  for key in sorted(os.listdir(cache)):
    store = store_lib.open_store(os.path.join(cache, key), ())
    if store is not None:  # Complete: its meta.json names its split.
      with open(os.path.join(cache, key, "meta.json")) as f:
        found[json.load(f)["parts"]["split"]] = store
  missing = [s for s in (config["train_split"], config["val_split"]) if s not in found]
  if missing:
    raise SystemExit(f"no complete store of split(s) {missing} in {cache} (found {sorted(found)}):"
                     " run the evaluation with --feature_cache=keep or a --feature_cache_dir")
  return found[config["train_split"]], found[config["val_split"]]


def compare(results, max_iter: int) -> Dict[str, Any]:
  """The comparison of one evaluation's results (a bench table, report/results_page.py): per
  layer the suite's top-1 and decay, the reference's, and their differences."""
  train, test = stores_of(results)
  config = results["config"]
  layers = [n for n in results["layers"] if n in train.dims]
  decays = list(config["probe_weight_decays"])
  rows = []
  for name in layers:
    start = time.time()
    top1, best, _, tests = reference(train, test, [name], decays, config["random_seed"],
                                     max_iter)[name]
    ours = results["layers"][name]
    same = tests[decays.index(ours["setting"]["weight_decay"])]
    rows.append((name, f"{100 * ours['top1']:.1f} ({ours['setting']['weight_decay']:g})",
                 f"{100 * top1:.1f} ({best:g})", f"{100 * (ours['top1'] - top1):+.1f}",
                 f"{100 * (ours['top1'] - same):+.1f}"))
    print(f"  {name}: {time.time() - start:.0f}s", flush=True)
  source = results.get("source") or {}  # The export's facts, or the random network's.
  backbone = source.get("hub_module") or config.get("hub_module") or "?"
  if backbone == "random_init":
    backbone = (f"random init {source.get('architecture')} {source.get('mode')} "
                f"w{source.get('filters_factor')}")
  else:
    backbone = export_label(backbone)
  return bench_table(
      f"{backbone}: {config['train_split']} / {config['val_split']} of {config['dataset']}",
      ("layer", "suite (decay)", "reference (decay)", "suite - reference",
       "at the suite's decay"), rows,
      [f"Top-1 (%); the reference: scikit-learn's LogisticRegression (L-BFGS, at most {max_iter} "
       "iterations), its decay chosen on the suite's minival; the last column compares both at "
       "the suite's decay (the fit alone, without the choice's ties)."])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True,
                      help="linear evaluations' results.json, comma-separated")
  parser.add_argument("--max_iter", type=int, default=MAX_ITER)
  parser.add_argument("--json_out", default="", help=JSON_OUT_HELP)
  args = parser.parse_args()
  paths = [p for p in args.results.split(",") if p]
  for path in paths:  # Every file, before any work.
    if not os.path.isfile(path):
      parser.error(f"--results: {path} is not a file (give an evaluation's results.json)")
  tables = []
  for path in paths:
    with open(path) as f:
      tables.append(compare(json.load(f), args.max_iter))
    print("\n" + bench_table_text(tables[-1]), flush=True)
  if args.json_out:
    from training import run_record  # pylint: disable=g-import-not-at-top
    write_bench_output(args.json_out, "bench/probes_vs_sklearn.py", tables,
                       run_record.record(random_seed=0))
    print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
  main()
