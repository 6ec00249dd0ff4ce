"""The tuned linear probes against a well-fitted reference (bench/probes_vs_sklearn.py:
scikit-learn's multinomial logistic regression on the same standardised features, its
regularisation chosen on the same minival from the same grid, fitted on the same training rows),
on every layer of a random-init ResNet-50 v2 (configs/evaluation/shapes.flags' protocol,
on the 1000 + 300 images of `shapes_small`).

Near chance (12 to 26% top-1 on 10 classes) one held-out image is a point, and the two sides'
choices differ by such ties; on 3000 training and 5000 test images of `shapes`, for a rotation
export and a random-init backbone: docs/results.md, "The tuned probes against a fitted logistic
regression". That the heads reach the reference's optimum is tested on its objective
(test_eval_heads.py)."""

import dataclasses
import json
import os

import numpy as np
import pytest

from bench import probes_vs_sklearn
from eval import linear_eval
import train_and_eval


@pytest.mark.slow
def test_tuned_probes_match_a_fitted_logistic_regression(tmp_path, shapes_data_dir):
  flags = train_and_eval.FLAGS
  flags.unparse_flags()
  argv = ["test", "--flagfile=configs/evaluation/shapes.flags", f"--workdir={tmp_path}/eval",
          "--dataset=shapes_small", f"--data_dir={shapes_data_dir}", "--train_split=train",
          "--val_split=test", "--feature_cache=keep", "--hub_module=random_init",
          "--architecture=resnet50", "--mode=v2", "--filters_factor=1",
          "--eval_preprocessing=resize,-1_to_1", "--resize_size=32",
          "--nodeterministic"]  # Op determinism is for the whole process: not for later tests.
  flags(argv)
  values, _ = train_and_eval.option_values(flags, argv[1:])
  config = dataclasses.replace(train_and_eval.evaluation_config(values), max_features=256)
  results = linear_eval.run_linear_eval(config)["layers"]
  ours = {n: v["top1"] for n, v in results.items() if n != "logits"}
  # The bench's own path: the stores found from results.json, its table as --json_out keeps it.
  with open(os.path.join(config.workdir, "results.json")) as f:
    table = probes_vs_sklearn.compare(json.load(f), probes_vs_sklearn.MAX_ITER)
  assert table["title"] == "random init resnet50 v2 w1: train / test of shapes_small"
  assert [row[0] for row in table["rows"] if row[0] != "logits"] == list(ours)
  by_layer = {row[0]: row for row in table["rows"]}
  for name, top1 in ours.items():  # The suite's side is the evaluation's own numbers.
    assert by_layer[name][1] == (f"{100 * top1:.1f} "
                                 f"({results[name]['setting']['weight_decay']:g})")
  reference = {n: float(r[2].split()[0]) for n, r in by_layer.items()}
  gaps = {n: float(r[3]) for n, r in by_layer.items()}
  same = {n: float(r[4]) for n, r in by_layer.items()}
  print("suite - sklearn, points:", gaps, "at the suite's decay:", same)
  assert max(ours, key=ours.get) == max(reference, key=reference.get), (ours, reference)
  # Measured: -1.7 to +1.3 points, -0.3 on average (300 test images: one is 0.33 points; each
  # side's choice on 100 held-out images is noisy); at the same decay -1.0 to +0.7. The protocol
  # before tuning was 3 to 14 points below the reference on 3000 + 1000 images of a rotation
  # export.
  assert all(gap >= -3.0 for gap in gaps.values()) and np.mean(list(gaps.values())) >= -1.0, gaps
  assert all(abs(gap) <= 2.0 for gap in same.values()), same
