"""Probes over training: the kept checkpoints and their exports, the series evaluation (resumed
point by point), and its heatmap and verdict in the report."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from core.errors import ConfigError
from eval import linear_eval
from eval import series
from report import over_training
from report import results_page
import report as report_lib
from tests.test_train_and_eval import small_config
import train_and_eval
from training import trainer as trainer_lib


def test_kept_steps():
  plan = trainer_lib.Plan(num_train_examples=100, steps_per_epoch=10.0, total_steps=30)
  assert trainer_lib.kept_steps(plan, None, ()) == []
  assert trainer_lib.kept_steps(plan, 1.0, ()) == [0, 10, 20, 30]
  assert trainer_lib.kept_steps(plan, 0.45, (7,)) == [0, 4, 7, 9, 14, 18, 22, 27, 30]
  assert trainer_lib.kept_steps(plan, None, (5, 5, 30)) == [0, 5, 30]
  with pytest.raises(ConfigError, match=r"--eval_at_steps: \[31\] lie beyond the last step"):
    trainer_lib.kept_steps(plan, None, (31,))
  # 2 epochs of 703.1 steps: the eighth quarter-epoch point (1406.25) is the last step, 1407.
  plan = trainer_lib.Plan(num_train_examples=45000, steps_per_epoch=703.125, total_steps=1407)
  assert trainer_lib.kept_steps(plan, 0.25, ()) == [0, 176, 352, 527, 703, 879, 1055, 1230,
                                                    1407]


@pytest.fixture(scope="module")
def run_with_series(tmp_path_factory, shapes_data_dir):
  """2 epochs of 8 steps with a checkpoint kept every half epoch: steps 0, 4, 8, 12, 16."""
  workdir = tmp_path_factory.mktemp("series") / "rot"
  config = small_config(workdir, shapes_data_dir, train_split="train[:64]", epochs=2,
                        eval_every_epochs=0.5, run_eval=True, keep_checkpoint_max=1,
                        optimizer="adam", lr=0.002)
  lines = []
  results = train_and_eval.run(config, print_fn=lines.append)
  return config, results, lines


def test_kept_checkpoints_are_exported_with_their_pretext_accuracy(run_with_series):
  config, results, lines = run_with_series
  steps = [0, 4, 8, 12, 16]
  kept = sorted(n for n in os.listdir(os.path.join(config.workdir, "kept_checkpoints"))
                if n.endswith(".index"))
  # Not rotated away (keep_checkpoint_max 1).
  assert kept == sorted(f"ckpt-{s}.index" for s in steps)
  assert len([n for n in os.listdir(config.checkpoint_dir) if n.endswith(".index")]) == 1
  exports = series.series_exports(config.workdir)
  assert [s for s, _ in exports] == steps
  assert results["series_exports"] == [p for _, p in exports]
  infos = [json.load(open(os.path.join(p, "export_info.json"))) for _, p in exports]
  assert [i["epoch"] for i in infos] == [0.0, 0.5, 1.0, 1.5, 2.0]
  accuracies = [i["pretext_metrics"]["accuracy"] for i in infos]
  assert all(0.0 <= a <= 1.0 for a in accuracies) and len(set(accuracies)) > 1
  # The last kept checkpoint is the trained network: its export gives the final export's outputs.
  images = tf.random.stateless_uniform([4, 32, 32, 3], (1, 2), -1.0, 1.0)
  final = tf.saved_model.load(config.export_dir).signatures["representation"](images=images)
  last = tf.saved_model.load(exports[-1][1]).signatures["representation"](images=images)
  first = tf.saved_model.load(exports[0][1]).signatures["representation"](images=images)
  for name in ("block1", "pre_logits"):
    np.testing.assert_allclose(last[name].numpy(), final[name].numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(first[name].numpy(), final[name].numpy(), atol=1e-3)
  with open(os.path.join(config.workdir, "pretext_results.json")) as f:
    assert json.load(f)["metrics"] == infos[-1]["pretext_metrics"]  # Evaluated once.
  assert sum("exported the checkpoint of step" in l for l in lines) == 5


def test_the_series_probes_every_checkpoint_resumes_and_is_reported(run_with_series, tmp_path,
                                                                    shapes_data_dir):
  config, _, _ = run_with_series
  root = tmp_path / "root"
  eval_config = linear_eval.LinearEvalConfig(
      workdir=str(root / "rot" / "probe_series"), dataset="shapes_small",
      data_dir=shapes_data_dir, hub_module=config.export_dir, train_split="train[:64]",
      val_split="test[:32]", batch_size=16, lr_scale_batch_size=16, epochs=2)
  lines = []
  results = series.run_probe_series(eval_config, print_fn=lines.append)
  with open(os.path.join(eval_config.workdir, "series.json")) as f:
    saved = json.load(f)
  points = saved["points"]
  assert [p["step"] for p in points] == [0, 4, 8, 12, 16]
  assert saved["source"]["hub_module"] == config.workdir
  assert saved["layer_order"][0] == "block1" and saved["run"]["random_seed"] == 0
  for point in points:
    with open(os.path.join(eval_config.workdir, f"step_{point['step']:08d}",
                           "results.json")) as f:
      per_step = json.load(f)
    assert point["top1"] == {n: per_step["layers"][n]["top1"] for n in saved["layer_order"]}
    assert per_step["source"]["hub_module"].endswith(f"exports/step_{point['step']:08d}")
  export_infos = [json.load(open(os.path.join(p, "export_info.json")))
                  for _, p in series.series_exports(config.workdir)]
  assert [p["pretext_accuracy"] for p in points] == [
      i["pretext_metrics"]["accuracy"] for i in export_infos]
  assert results["evaluation"] == "probe_series" and results["layers"]
  assert set(results["times"]) == {"probes_s", "total_s"}
  assert 0 < results["times"]["probes_s"] <= results["times"]["total_s"]
  assert results["layers"]["block1"]["top1"] == points[-1]["top1"]["block1"]

  # Again: every point is read back; a point whose results are gone is the only one redone.
  os.remove(os.path.join(eval_config.workdir, "step_00000008", "results.json"))
  lines.clear()
  again = series.run_probe_series(eval_config, print_fn=lines.append)
  assert sum("probed earlier" in l for l in lines) == 4
  assert [l for l in lines if l.startswith("step 8 ")][0].startswith("step 8 (3/5): best layer")
  with open(os.path.join(eval_config.workdir, "series.json")) as f:
    assert json.load(f)["points"][2]["top1"] == points[2]["top1"]  # Same seed, same probe.
  assert again["layers"] == results["layers"]
  # A checkpoint exported again (here: its export_info changed) is another export: its probe is
  # redone, the old results set aside; the others are read back.
  info_path = os.path.join(config.workdir, "exports", "step_00000004", "export_info.json")
  info = json.load(open(info_path))
  with open(info_path, "w") as f:
    json.dump(dict(info, epoch=0.5000001), f)
  lines.clear()
  series.run_probe_series(eval_config, print_fn=lines.append)
  assert sum("probed earlier" in l for l in lines) == 4
  assert any(l.startswith("step 4 (2/5): best layer") for l in lines), lines
  assert os.listdir(os.path.join(eval_config.workdir, "step_00000004", "replaced"))
  with open(info_path, "w") as f:
    json.dump(info, f)

  paths, _ = report_lib.make_report([str(root)])
  text = open(paths["markdown"]).read()
  section = text[text.index("## Probes over training"):]
  assert "### rot (probe_series)" in section or "### rot/probe_series" in section, section[:300]
  assert ("rise together" in section or "do not rise together" in section)
  assert "over 5 checkpoints" in section
  plot = [p for p in paths["plots"] if os.path.basename(p).startswith("over_training_")]
  assert len(plot) == 1 and os.path.getsize(plot[0]) > 10000
  # The per-checkpoint results are not cells of their own.
  assert text.count("step_0000") == 0
  # Its numbers as a table: a column per checkpoint, the best layer of each in bold.
  header = "| step (epoch) | " + " | ".join(f"{p['step']} ({p['epoch']:.2f})" for p in points)
  assert header in section
  block1 = next(l for l in section.splitlines() if l.startswith("| block1 |"))
  expected = [f"{100 * p['top1']['block1']:.1f}" for p in points]
  assert [c.strip().strip("*") for c in block1.strip("|").split("|")[1:]] == expected
  pretext = next(l for l in section.splitlines() if l.startswith("| pretext accuracy |"))
  assert pretext.endswith(f"| {100 * points[-1]['pretext_accuracy']:.1f} |")

  # On a results page (docs/results.md): series.json is kept beside the last checkpoint's
  # results, not the per-checkpoint ones, and the page has the same table without the plot.
  results_dir = tmp_path / "docs" / "results"
  copied = results_page.add_section(str(root), str(results_dir / "over"), "Over training",
                                    "make series")
  assert sorted(os.path.relpath(p, results_dir / "over") for p in copied) == [
      "rot/probe_series/results.json", "rot/probe_series/series.json"]
  page = results_page.render(str(results_dir), str(tmp_path / "docs" / "results.md"))
  assert header in page and block1 in page and "over 5 checkpoints" in page
  assert ".png" not in page


def test_a_run_without_kept_checkpoints_is_refused(tmp_path, shapes_data_dir):
  with pytest.raises(ConfigError, match="kept no checkpoints to probe.*--eval_every_epochs"):
    series.series_exports(str(tmp_path))


def test_spearman_and_the_verdict():
  assert over_training.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
  assert over_training.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
  # Ties share their mean rank: Pearson of [0, 1.5, 1.5, 3] and [0, 2, 1, 3].
  assert over_training.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(3 / np.sqrt(10))
  assert over_training.spearman([1, 2], [1, 2]) is None
  points = [dict(step=s, pretext_accuracy=a, best_layer=dict(name=n, top1=b))
            for s, a, n, b in [(0, 0.25, "block1", 0.2), (10, 0.6, "block2", 0.3),
                               (20, 0.8, "block2", 0.28), (30, 0.9, "block3", 0.26)]]
  line = over_training.verdict(points)
  assert "do not rise together" in line and "-0.40" not in line
  assert "from block1 (20.0% at step 0) to block3 (26.0% at step 30)" in line
  assert over_training.verdict(points[:1]) == "1 checkpoint (step 0): best layer block1 20.0%."
  rising = [dict(p, best_layer=dict(p["best_layer"], top1=0.1 * i)) for i, p in
            enumerate(points)]
  assert "(Spearman rank correlation +1.00 over 4 checkpoints)" in over_training.verdict(rising)
