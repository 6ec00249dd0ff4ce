"""Linear CKA: the unbiased HSIC estimator against its U-statistic definition, the invariants of
CKA, the minibatch estimate, and the evaluation on exports (toy and real)."""

import itertools
import json
import os

import numpy as np
import pytest

from eval import cka
from eval import linear_eval
from tests import test_eval_linear_eval as toy


def hsic_u_statistic(k, l):
  """Unbiased HSIC as the U-statistic it is (Song et al. 2012): means over distinct indices of
  k_ij l_ij, k_ij l_qr and k_ij l_iq, combined as E[kl] + E[k]E[l] - 2 E[k l']."""
  n = len(k)
  pairs = [(i, j) for i, j in itertools.permutations(range(n), 2)]
  triples = list(itertools.permutations(range(n), 3))
  quads = list(itertools.permutations(range(n), 4))
  same = np.mean([k[i, j] * l[i, j] for i, j in pairs])
  apart = np.mean([k[i, j] * l[q, r] for i, j, q, r in quads])
  shared = np.mean([k[i, j] * l[i, q] for i, j, q in triples])
  return same + apart - 2 * shared


def test_unbiased_hsic_matches_its_u_statistic():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 3))
  x2 = x @ rng.normal(size=(5, 4)) + 0.3 * rng.normal(size=(7, 4))
  k, l, k2 = x @ x.T, y @ y.T, x2 @ x2.T
  got = cka.hsic_terms([cka.centred_gram(x), cka.centred_gram(x2)],
                       [cka.centred_gram(y), cka.centred_gram(x)])
  want = [[hsic_u_statistic(k, l), hsic_u_statistic(k, k)],
          [hsic_u_statistic(k2, l), hsic_u_statistic(k2, k)]]
  np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
  with pytest.raises(ValueError, match="at least 4 examples"):
    cka.hsic_terms([cka.centred_gram(x[:3])], [cka.centred_gram(y[:3])])


def _batches(arrays, batch):
  n = len(next(iter(arrays.values())))
  for start in range(0, n, batch):
    yield {name: a[start:start + batch] for name, a in arrays.items()}


def test_cka_invariants_in_minibatches():
  rng = np.random.default_rng(1)
  n, p = 1024, 48
  x = rng.normal(size=(n, p)) @ rng.normal(size=(p, p))  # Correlated features.
  q, _ = np.linalg.qr(rng.normal(size=(p, p)))
  a = {"x": x}
  b = {"same": x, "rotated": x @ q, "scaled": 3.5 * x, "noise": rng.normal(size=(n, p)),
       "mixed": x + rng.normal(size=(n, p)) * x.std(axis=0)}  # Signal-to-noise 1.
  matrix, acc = cka.cka(_batches(a, 256), _batches(b, 256), ["x"], list(b))
  values = dict(zip(b, matrix[0]))
  assert acc.num_batches == 4 and acc.num_examples == n
  assert values["same"] == pytest.approx(1.0, abs=1e-12)
  assert values["rotated"] == pytest.approx(1.0, abs=1e-9)   # Orthogonal transforms.
  assert values["scaled"] == pytest.approx(1.0, abs=1e-12)   # Isotropic scaling.
  assert abs(values["noise"]) < 0.03                         # Independent: near 0, unbiased.
  assert 0.1 < values["mixed"] < 0.95


def test_minibatch_cka_of_one_batch_is_the_full_estimate_and_short_batches_are_left_out():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(64, 6)), rng.normal(size=(64, 6))
  y[:, :3] += x[:, :3]
  k, l = cka.centred_gram(x), cka.centred_gram(y)
  full = cka.hsic_terms([k], [l])[0, 0] / np.sqrt(
      cka.hsic_terms([k], [k])[0, 0] * cka.hsic_terms([l], [l])[0, 0])
  one, _ = cka.cka([{"x": x}], [{"y": y}], ["x"], ["y"])
  assert one[0, 0] == pytest.approx(full, rel=1e-12) and 0.2 < full < 0.9
  # 64 + 3 examples in batches of 32: the batch of 3 cannot be estimated on and is left out.
  x3, y3 = np.concatenate([x, x[:3]]), np.concatenate([y, y[:3]])
  _, acc = cka.cka(_batches({"x": x3}, 32), _batches({"y": y3}, 32), ["x"], ["y"])
  assert acc.num_batches == 2 and acc.num_examples == 64


def _config(tmp_path, export, **overrides):
  kwargs = dict(workdir=str(tmp_path / "cka"), dataset="toy", hub_module=export,
                val_split="test", eval_batch_size=40, max_features=200)
  kwargs.update(overrides)
  return linear_eval.LinearEvalConfig(**kwargs)


def test_cka_of_toy_exports(tmp_path, monkeypatch):
  toy.FakeData().install(monkeypatch)
  export_a = toy.save_export(tmp_path / "a")
  export_b = toy.save_export(tmp_path / "b", seed=5)
  same = cka.run_cka(_config(tmp_path, export_a), print_fn=lambda _: None)
  with open(os.path.join(tmp_path, "cka", "cka.json")) as f:
    assert json.load(f) == same
  matrix = np.array(same["matrix"])
  assert same["layers_a"] == same["layers_b"] == toy.LAYERS
  np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-6)
  np.testing.assert_allclose(matrix, matrix.T, atol=1e-6)
  assert same["num_examples"] == 120 and same["num_batches"] == 3
  assert same["a"]["hub_module"] == same["b"]["hub_module"] == os.path.abspath(export_a)
  assert same["run"]["random_seed"] == 0

  other = cka.run_cka(_config(tmp_path, export_a, cka_other=export_b,
                              workdir=str(tmp_path / "cka_b"), layers=("block2", "pre_logits")),
                      print_fn=lambda _: None)
  assert other["b"]["hub_module"] == os.path.abspath(export_b)
  assert other["layers_a"] == ["block2", "pre_logits"]
  values = np.array(other["matrix"])
  assert values.shape == (2, 2) and np.all(values < 0.999) and np.all(values > 0.0)
  # Done once: the same config again is read back, not recomputed.
  assert cka.run_cka(_config(tmp_path, export_a, cka_other=export_b,
                             workdir=str(tmp_path / "cka_b"), layers=("block2", "pre_logits")),
                     print_fn=lambda _: None)["times"] == other["times"]
  # B exported again (same path, same config): the matrix is computed anew, not read back stale.
  toy.save_export(tmp_path / "b", seed=6)
  redone = cka.run_cka(_config(tmp_path, export_a, cka_other=export_b,
                               workdir=str(tmp_path / "cka_b"), layers=("block2", "pre_logits")),
                       print_fn=lambda _: None)
  assert redone["times"] != other["times"] and redone["matrix"] != other["matrix"]


def test_cka_of_a_trained_backbone_against_its_random_init(tmp_path, shapes_data_dir):
  from tests.test_train_and_eval import small_config
  import train_and_eval
  config = small_config(tmp_path / "rot", shapes_data_dir, epochs=2)
  train_and_eval.run(config, print_fn=lambda _: None)
  out = cka.run_cka(linear_eval.LinearEvalConfig(
      workdir=str(tmp_path / "cka"), dataset="shapes_small", data_dir=shapes_data_dir,
      hub_module=config.workdir, cka_other="random_init", val_split="test[:96]",
      eval_batch_size=32), print_fn=lambda _: None)
  assert out["b"]["hub_module"] == "random_init" and out["b"]["architecture"] == "vgg19"
  assert out["b"]["filters_factor"] == 1 and out["b"]["eval_preprocessing"] == "resize,-1_to_1"
  assert out["layers_a"][:2] == ["block1", "block2"] and "logits" not in out["layers_b"]
  assert out["num_examples"] == 96
  matrix = np.array(out["matrix"], float)
  assert np.all(np.isfinite(matrix)) and np.all(matrix <= 1.0 + 1e-6)
  # B is another network (not A read twice): no pair of layers is identical.
  assert matrix.max() < 0.999


def test_the_report_draws_every_cka_matrix_under_its_roots(tmp_path, monkeypatch):
  import report as report_lib
  toy.FakeData().install(monkeypatch)
  export_a = toy.save_export(tmp_path / "rot" / "export")
  export_b = toy.save_export(tmp_path / "vgg" / "export", seed=5)
  root = tmp_path / "root"
  cka.run_cka(_config(tmp_path, export_a, cka_other=export_b,
                      workdir=str(root / "rot_vs_vgg")), print_fn=lambda _: None)
  cka.run_cka(_config(tmp_path, export_a, workdir=str(root / "cell" / "self")),
              print_fn=lambda _: None)
  paths, _ = report_lib.make_report([str(root)])
  text = open(paths["markdown"]).read()
  section = text[text.index("## Layer similarity (linear CKA)"):]
  assert "### rot_vs_vgg" in section and "### cell/self" in section
  assert "toy toy w1 (rot) vs toy toy w1 (vgg)" in section
  first = section[section.index("### cell/self"):]
  rows = [l for l in first.splitlines() if l.startswith("| block") or l.startswith("| pre")]
  assert rows[0].split(" | ")[1] == "1.00"  # block1 with itself.
  assert [os.path.basename(p) for p in paths["plots"]] == ["cka_cell_self.png",
                                                           "cka_rot_vs_vgg.png"]
  assert all(os.path.getsize(p) > 5000 for p in paths["plots"])
  saved = json.load(open(paths["json"]))["cka"]
  assert [c["name"] for c in saved] == ["cell/self", "rot_vs_vgg"]
