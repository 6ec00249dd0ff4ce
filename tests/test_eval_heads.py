"""Per-layer heads on toy features, kNN against NumPy, low-label sampling."""

import numpy as np
import pytest

from eval import heads
from eval import knn
from eval import low_label
from training import schedules

NUM_CLASSES = 4


def toy_features(num, seed):
  """Layer 'informative': Gaussian blobs around class centres (large offset, unit noise);
  layer 'noise': unrelated to the label."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, NUM_CLASSES, size=num).astype(np.int32)
  centres = np.random.default_rng(123).normal(size=(NUM_CLASSES, 16)) * 4.0
  informative = centres[labels] + rng.normal(size=(num, 16))
  noise = rng.normal(size=(num, 24)) * 10.0 + 50.0
  feats = {"informative": (informative * 30.0 + 7.0).astype(np.float32),  # Badly scaled on purpose.
           "noise": noise.astype(np.float32)}
  return feats, labels


def train_and_eval(eval_model, standardize=True, epochs=6, weight_decay=1e-4):
  train, train_labels = toy_features(800, 0)
  test, test_labels = toy_features(400, 1)
  stats = heads.feature_stats(train) if standardize else None
  probes = heads.Probes({k: v.shape[1] for k, v in train.items()}, NUM_CLASSES, eval_model,
                        channels_hidden=32, weight_decay=weight_decay, seed=0, stats=stats)
  steps_in_epoch = heads.steps_per_epoch(800, 64)
  optimizer = schedules.make_optimizer("sgd", 0.1, 64, 256, steps_in_epoch, warmup_epochs=1,
                                       decay_epochs=[4], lr_decay_factor=0.1)
  heads.train_probes_on_arrays(probes, optimizer, train, train_labels, 64, 0,
                               heads.num_train_steps(epochs, steps_in_epoch))
  if standardize:  # In place, as the heads take them.
    np.testing.assert_allclose(train["informative"].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train["informative"].std(0), 1, rtol=1e-4)
  return heads.evaluate_probes(probes, heads.array_eval_batches(test, test_labels, 128))


@pytest.mark.parametrize("eval_model", ["linear", "mlp"])
def test_heads_learn_informative_layer_only(eval_model):
  metrics = train_and_eval(eval_model)
  assert metrics["informative"]["top1"] > 0.97
  assert metrics["informative"]["loss"] < 0.2
  assert metrics["noise"]["top1"] < 0.4  # Chance is 0.25.
  assert metrics["noise"]["loss"] > 1.2
  for m in metrics.values():
    assert m["top5"] == 1.0  # k = min(5, 4 classes) = 4: every class is in the top k.


def test_heads_train_in_one_trace(monkeypatch):
  """72 steps run as chunks of 64 and 8 (ARRAY_STEPS_PER_CALL): the shorter chunk reuses the
  trace of the first (a trace of every head's step costs as much as many steps)."""
  traces = []
  losses = heads.Probes.losses

  def counted(self, *args, **kwargs):  # Runs once per trace of the heads' step.
    traces.append(1)
    return losses(self, *args, **kwargs)
  monkeypatch.setattr(heads.Probes, "losses", counted)
  assert heads.num_train_steps(6, heads.steps_per_epoch(800, 64)) == 72
  assert train_and_eval("linear")["informative"]["top1"] > 0.97
  assert len(traces) == 1


def test_stats_accumulator_matches_numpy():
  x = np.random.default_rng(0).normal(size=(1000, 5)) * [1, 2, 3, 0, 5] + [0, 10, -3, 7, 1000]
  acc = heads.StatsAccumulator()
  for start in range(0, 1000, 128):
    acc.update({"a": x[start:start + 128]})
  stats = acc.result()["a"]
  np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-6)
  np.testing.assert_allclose(stats.inv_std[[0, 1, 2, 4]], 1 / x.std(0)[[0, 1, 2, 4]], rtol=1e-5)
  assert stats.inv_std[3] == 0  # Constant feature: zeroed.
  # float32 features far from zero (a naive sum of squares in float32 would lose the variance):
  # the float64 sums keep it.
  y = (x[:, [0, 1, 2, 4]] + 1e4).astype(np.float32)
  acc = heads.StatsAccumulator()
  for start in range(0, 1000, 128):
    acc.update({"b": y[start:start + 128]})
  stats = acc.result()["b"]
  np.testing.assert_allclose(stats.mean, y.astype(np.float64).mean(0), rtol=1e-7)
  np.testing.assert_allclose(stats.inv_std, 1 / y.astype(np.float64).std(0), rtol=1e-4)


def test_epoch_orders_are_seeded_permutations():
  first = next(heads.epoch_orders(10, 3, seed=5))
  again = next(heads.epoch_orders(10, 3, seed=5))
  assert len(first) == 3 and all(len(b) == 3 for b in first)  # Last partial batch dropped.
  assert all((a == b).all() for a, b in zip(first, again))
  assert len(set(np.concatenate(first))) == 9


def np_knn(train, train_labels, test, num_classes, k, temperature):
  train = train / np.linalg.norm(train, axis=1, keepdims=True)
  test = test / np.linalg.norm(test, axis=1, keepdims=True)
  predictions = []
  for q in test:
    sim = train @ q
    nearest = np.argsort(-sim, kind="stable")[:k]
    votes = np.zeros(num_classes)
    for i in nearest:
      votes[train_labels[i]] += np.exp(sim[i] / temperature)
    predictions.append(np.argmax(votes))
  return np.array(predictions)


@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (20, 0.5)])
def test_knn_matches_numpy(k, temperature):
  train, train_labels = toy_features(300, 2)
  test, test_labels = toy_features(100, 3)
  for name in train:
    want = np_knn(train[name].astype(np.float64), train_labels, test[name].astype(np.float64),
                  NUM_CLASSES, k, temperature)
    # Small chunks exercise the running top-k across blocks.
    scores = knn.knn_scores(train[name], train_labels, test[name], NUM_CLASSES, k, temperature,
                            test_chunk=33, train_chunk=70)
    np.testing.assert_array_equal(np.argmax(scores, 1), want)
    acc = knn.knn_accuracy(train[name], train_labels, test[name], test_labels, NUM_CLASSES, k,
                           temperature)
    assert acc == pytest.approx(np.mean(want == test_labels))
  per_layer = knn.knn_per_layer(train, train_labels, test, test_labels, NUM_CLASSES, k, temperature)
  assert per_layer["noise"] < 0.45 < 0.9 < per_layer["informative"]


def test_low_label_counts_and_determinism():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(5), [10, 20, 30, 7, 13])
  rng.shuffle(labels)
  idx = low_label.low_label_indices(labels, examples_per_class=4, seed=3)
  assert np.bincount(labels[idx]).tolist() == [4] * 5
  assert len(set(idx)) == len(idx) and (np.diff(idx) > 0).all()
  np.testing.assert_array_equal(idx, low_label.low_label_indices(labels, examples_per_class=4,
                                                                 seed=3))
  assert not np.array_equal(idx, low_label.low_label_indices(labels, examples_per_class=4, seed=4))
  idx = low_label.low_label_indices(labels, train_fraction=0.1, seed=0)
  # floor(0.1 * n_c + 0.5), at least one: 10->1, 20->2, 30->3, 7->1, 13->1.
  assert np.bincount(labels[idx]).tolist() == [1, 2, 3, 1, 1]
  assert len(low_label.low_label_indices(labels, train_fraction=1.0)) == len(labels)
  with pytest.raises(ValueError, match="class 3 has only 7.*examples_per_class=8"):
    low_label.low_label_indices(labels, examples_per_class=8)
  with pytest.raises(ValueError, match="exactly one"):
    low_label.low_label_indices(labels, train_fraction=0.5, examples_per_class=2)
  with pytest.raises(ValueError, match=r"train_fraction must be in \(0, 1\], got 1.5"):
    low_label.low_label_indices(labels, train_fraction=1.5)
