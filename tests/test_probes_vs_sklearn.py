"""The tuned linear probes against a well-fitted reference: scikit-learn's multinomial logistic
regression (L-BFGS), its regularisation chosen on the same held-out minival from the same grid
(C = 1 / (weight decay x examples), the same objective), refitted on the whole training split,
tested on the same standardised features of every layer of a random-init ResNet-50 v2
(configs/evaluation/shapes.flags' protocol, on the 1000 + 300 images of `shapes_small`).

Of a trained backbone (one epoch of supervised training on `shapes`, 2000 + 1000 images) the
suite's probes came within 0.5 points at five of six layers and 3.9 below at block3, where the
reference chose a weak regularisation that 50 epochs of SGD do not reach (docs/probes.md)."""

import dataclasses
import os

import numpy as np
from sklearn.linear_model import LogisticRegression

from eval import heads
from eval import linear_eval
from eval import probing
from eval import store as store_lib
import train_and_eval

TRAIN, TEST = 1000, 300


def _sklearn(train, test, rows, seed, weight_decays):
  """Per layer: the reference's test top-1, as the suite's protocol runs it."""
  fit, held = heads.minival_split(rows, probing.MINIVAL_FRACTION, probing.MINIVAL_MAX, seed)
  out = {}
  for name in train.layers:
    x, x_test = train.read_all(name).astype(np.float64), test.read_all(name).astype(np.float64)

    def standardized(part, *others):
      mean, std = x[part].mean(0), x[part].std(0)
      std[std <= 1e-6 * (1 + np.abs(mean))] = np.inf
      return [(o - mean) / std for o in others]

    def model(part, decay):
      if decay == 0:
        return LogisticRegression(penalty=None, max_iter=3000)
      return LogisticRegression(C=1.0 / (decay * len(part)), max_iter=3000)
    x_fit, x_held = standardized(fit, x[fit], x[held])
    scores = [model(fit, d).fit(x_fit, train.labels[fit]).score(x_held, train.labels[held])
              for d in weight_decays]
    best = weight_decays[int(np.argmax(scores))]
    x_all, x_t = standardized(rows, x, x_test)
    out[name] = model(rows, best).fit(x_all, train.labels).score(x_t, test.labels)
  return out


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
  ours = {n: v["top1"] for n, v in linear_eval.run_linear_eval(config)["layers"].items()
          if n != "logits"}
  cache = os.path.join(config.workdir, "feature_cache")
  stores = [store_lib.open_store(os.path.join(cache, k), ()) for k in sorted(os.listdir(cache))]
  train, test = sorted(stores, key=lambda s: -s.num_examples)
  train.layers = test.layers = list(ours)
  reference = _sklearn(train, test, np.arange(TRAIN), config.random_seed,
                       list(config.probe_weight_decays))
  gaps = {n: round(100 * (ours[n] - reference[n]), 1) for n in ours}
  print("suite - sklearn, points:", gaps)
  assert max(ours, key=ours.get) == max(reference, key=reference.get), (ours, reference)
  # Measured: -2.0 to +5.0 points, -0.1 on average (300 test images: one is 0.33 points; each
  # side's choice on 100 held-out images is noisy); the protocol before tuning was 3 to 14 points
  # below the reference on 3000 + 1000 images of a rotation export (docs/probes.md).
  assert all(gap >= -3.0 for gap in gaps.values()) and np.mean(list(gaps.values())) >= -1.0, gaps
