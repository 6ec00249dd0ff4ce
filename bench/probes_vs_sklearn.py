"""The suite's per-layer linear probes against a fitted reference, on the same stored features:
scikit-learn's multinomial logistic regression (L-BFGS), its regularisation chosen on the same
held-out minival from the same grid of weight decays (C = 1 / (weight decay x examples): the same
objective as the heads'), fitted on the same training rows (the split less the minival) and tested
on the same test rows, the features standardised with the same rows' statistics.

  .venv/bin/python train_and_eval.py --flagfile=configs/evaluation/shapes.flags \\
      --hub_module=<export> --train_split='train[:3000]' --val_split='test[:5000]' \\
      --workdir=<dir> --feature_cache=keep
  .venv/bin/python bench/probes_vs_sklearn.py --results=<dir>/results.json

Prints per layer: the suite's top-1 and chosen decay, the reference's, their difference, and the
difference from the reference at the suite's decay (the fit alone, without the choice's ties).
tests/test_probes_vs_sklearn.py runs the same comparison on a small random-init backbone. On
1000 test images two classifiers this close differ by about half a point by chance (docs/probes.md).
"""

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from eval import heads  # pylint: disable=g-import-not-at-top
from eval import probing  # pylint: disable=g-import-not-at-top
from eval import store as store_lib  # pylint: disable=g-import-not-at-top

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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", required=True, help="a linear evaluation's results.json")
  parser.add_argument("--max_iter", type=int, default=MAX_ITER)
  args = parser.parse_args()
  with open(args.results) as f:
    results = json.load(f)
  train, test = stores_of(results)
  layers = [n for n in results["layers"] if n in train.dims]
  decays = list(results["config"]["probe_weight_decays"])
  print(f"{'layer':12s} {'suite':>6s} {'decay':>7s} {'sklearn':>8s} {'decay':>7s} {'diff':>6s} "
        f"{'diff at the suite decay':>24s}")
  for name in layers:
    start = time.time()
    top1, best, _, tests = reference(train, test, [name], decays,
                                     results["config"]["random_seed"], args.max_iter)[name]
    ours = results["layers"][name]
    same = tests[decays.index(ours["setting"]["weight_decay"])]
    print(f"{name:12s} {100 * ours['top1']:6.1f} {ours['setting']['weight_decay']:7g} "
          f"{100 * top1:8.1f} {best:7g} {100 * (ours['top1'] - top1):+6.1f} "
          f"{100 * (ours['top1'] - same):+24.1f}  ({time.time() - start:.0f}s)", flush=True)


if __name__ == "__main__":
  main()
