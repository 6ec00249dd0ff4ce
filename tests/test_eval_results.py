"""results.json: schema, atomic writing, skipping cells already evaluated, the text table."""

import dataclasses
import json
import os

import pytest

from eval import results


@dataclasses.dataclass
class Config:
  """An evaluation config's fields as results.py reads them."""
  dataset: str
  lr: float
  workdir: str
  force: bool


def make_results(config=None, knn=False):
  config = config or {"dataset": "shapes", "lr": 0.1, "decay_epochs": (10.0, 20.0),
                      "workdir": "/tmp/x", "force": False}
  layers = {"block1": dict(dim=8192, top1=0.41, top5=0.8, loss=1.7),
            "block2": dict(dim=9000, top1=0.63, top5=0.9, loss=1.2),
            "pre_logits": dict(dim=2048, top1=0.63, top5=0.95, loss=1.1)}
  if knn:
    for i, entry in enumerate(layers.values()):
      entry["knn_top1"] = 0.3 + 0.1 * i
  return results.build_results(
      config, dict(hub_module="/w/export", task="rotation", architecture="resnet50",
                   filters_factor=4, mode="v2", eval_preprocessing="resize,-1_to_1",
                   fingerprint="0123456789abcdef", extra="dropped"),
      dict(name="shapes", train_split="train", val_split="test", num_classes=10,
           num_train_examples=100, num_val_examples=50),
      ["block1", "block2", "pre_logits"], layers,
      dict(feature_extraction_s=1.0, head_training_s=2.0, knn_s=0.0, total_s=3.5))


def test_schema():
  r = make_results(knn=True)
  assert set(r) == {"format_version", "evaluation", "config", "source", "dataset", "low_label",
                    "layer_order", "layers", "best_layer", "times", "run"}
  assert r["evaluation"] == "linear_eval" and r["run"] is None  # Given by the evaluation.
  # The backbone's settings (architectures.MODEL_SETTINGS) are recorded; those not given as None.
  assert r["source"] == dict(hub_module="/w/export", task="rotation", architecture="resnet50",
                             filters_factor=4, mode="v2", last_relu=None, vit_patch_size=None,
                             vit_position_embedding=None, eval_preprocessing="resize,-1_to_1",
                             fingerprint="0123456789abcdef")
  assert r["config"]["decay_epochs"] == [10.0, 20.0]
  assert r["layer_order"] == ["block1", "block2", "pre_logits"]
  assert set(r["layers"]["block1"]) == {"dim", "top1", "top5", "loss", "knn_top1"}
  assert r["best_layer"] == {"name": "block2", "top1": 0.63}  # Tie: the shallower layer.
  assert r["low_label"] is None
  assert json.loads(json.dumps(r)) == r  # Plain JSON data.
  diverged = results.build_results({}, {}, {}, ["a", "b"], {
      "a": dict(dim=1, top1=float("nan"), top5=0.5, loss=float("inf")),
      "b": dict(dim=1, top1=0.2, top5=0.5, loss=2.0)}, {})
  assert diverged["layers"]["a"]["top1"] is None and diverged["layers"]["a"]["loss"] is None
  assert diverged["best_layer"]["name"] == "b"
  assert results.format_table(diverged).splitlines()[1].split() == ["a", "1", "nan", "50.00", "nan"]
  with pytest.raises(ValueError, match="lack 'top5'"):
    results.build_results({}, {}, {}, ["a"], {"a": dict(dim=1, top1=0.1, loss=0.2)}, {})


def test_atomic_write_and_replace(tmp_path):
  workdir = str(tmp_path / "cell")
  first = make_results()
  path = results.write_results(workdir, first)
  assert path == os.path.join(workdir, "results.json")
  assert results.read_results(workdir) == first
  assert os.listdir(workdir) == ["results.json"]  # No temporary files left.

  broken = dict(first, times={"total_s": object()})  # Not JSON-serialisable: fails mid-write.
  with pytest.raises(TypeError):
    results.write_results(workdir, broken)
  assert os.listdir(workdir) == ["results.json"]
  assert results.read_results(workdir) == first  # The old file is intact.

  second = make_results(knn=True)
  results.write_results(workdir, second)
  assert results.read_results(workdir) == second
  assert os.listdir(workdir) == ["results.json"]


def test_results_exist(tmp_path):
  workdir = str(tmp_path)
  config = {"dataset": "shapes", "lr": 0.1, "decay_epochs": (10.0, 20.0), "workdir": workdir,
            "force": False, "feature_cache_dir": None}
  fingerprint = "0123456789abcdef"
  assert not results.results_exist(workdir, config, fingerprint)
  results.write_results(workdir, make_results(config))
  assert results.results_exist(workdir, config, fingerprint)
  # Fields that do not change the results do not count.
  assert results.results_exist(workdir, dict(config, workdir="/elsewhere", force=True,
                                             feature_cache_dir="/cache"), fingerprint)
  assert not results.results_exist(workdir, dict(config, lr=0.2), fingerprint)
  # Of another export (or of one nothing identifies): not these results.
  assert not results.results_exist(workdir, config, "fedcba9876543210")
  assert not results.results_exist(workdir, config, None)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    f.write("{truncated")
  assert not results.results_exist(workdir, config, fingerprint)


def test_results_of_another_config_or_export_are_set_aside_not_overwritten(tmp_path):
  workdir = str(tmp_path)
  config = Config("shapes", 0.1, workdir, False)
  fingerprint, lines = "0123456789abcdef", []
  earlier = make_results(dataclasses.asdict(config))
  results.write_results(workdir, earlier)
  assert results.skip_or_set_aside(workdir, config, fingerprint, lines.append) == earlier
  assert lines == [f"results of this config and backbone exist in {workdir}; reusing them "
                   "(--force re-runs)"]
  # --force: recomputed in place (the same settings).
  assert results.skip_or_set_aside(workdir, dataclasses.replace(config, force=True),
                                   fingerprint, lines.append) is None
  assert os.listdir(workdir) == ["results.json"]
  # Another export, then another config: each time the file moves aside, whole.
  for other_config, other_fingerprint in ((config, "fedcba9876543210"),
                                          (dataclasses.replace(config, lr=0.2), fingerprint)):
    lines.clear()
    assert results.skip_or_set_aside(workdir, other_config, other_fingerprint,
                                     lines.append) is None
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    moved = lines[0].rsplit(" ", 1)[1]
    assert lines == [f"{workdir} held results of another config or backbone: moved to {moved}"]
    assert json.load(open(os.path.join(moved, "results.json"))) == earlier
    results.write_results(workdir, earlier)
  assert len(os.listdir(os.path.join(workdir, "replaced"))) == 2


def test_format_table():
  table = results.format_table(make_results(knn=True))
  lines = table.splitlines()
  assert lines[0].split() == ["layer", "dim", "top1", "top5", "loss", "knn"]
  assert lines[1].split() == ["block1", "8192", "41.00", "80.00", "1.7000", "30.00"]
  assert lines[-1] == "best layer: block2 (top1 63.00)"
  assert "knn" not in results.format_table(make_results()).splitlines()[0]
