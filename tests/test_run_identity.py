"""No number under settings that did not make it: a workdir's training is resumed only under the
settings that made it (every option that changes results), and an evaluation's results are
reused only for the export they measured; what is made with other settings is moved aside
whole, never overwritten or relabelled."""

import dataclasses
import json
import os

import pytest

from core import files
from core.errors import ConfigError
from eval import linear_eval
from tests.test_train_and_eval import small_config
import train_and_eval
from training import export as export_lib


def _quiet(_):
  pass


def _config_json(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def _checkpoints(workdir):
  return sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints"))
                if n.endswith(".index"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_data_dir):
  """A finished run (2 steps, --run_eval) that the tests below only read."""
  config = small_config(tmp_path_factory.mktemp("trained") / "wd", shapes_data_dir,
                        run_eval=True)
  train_and_eval.run(config, print_fn=_quiet)
  return config


@pytest.mark.parametrize("change, shown", [
    (dict(lr=0.5), "lr 0.1 -> 0.5"),
    (dict(preprocessing="resize,to_gray,-1_to_1,rotate", grayscale_probability=1.0),
     "preprocessing 'resize,-1_to_1,rotate' -> 'resize,to_gray,-1_to_1,rotate', "
     "grayscale_probability 0 -> 1"),
    (dict(random_seed=3), "random_seed 0 -> 3"),
    (dict(epochs=2, lr_schedule="cosine"), "epochs 1 -> 2, lr_schedule 'step' -> 'cosine'"),
])
def test_a_trained_workdir_refuses_other_settings_and_keeps_its_files(trained, change, shown):
  config = trained
  before = {name: os.stat(os.path.join(config.workdir, name)).st_mtime_ns
            for name in ("config.json", "pretext_results.json", "export/saved_model.pb")}
  with pytest.raises(ConfigError) as error:
    train_and_eval.run(dataclasses.replace(config, **change), print_fn=_quiet)
  message = str(error.value)
  assert message.startswith(f"--workdir={config.workdir} holds a run trained with other "
                            f"settings ({shown}, up to step 2)"), message
  assert "Use another --workdir, or add --restart" in message and "\n" not in message
  # Nothing was touched: not its config, its results, its export, its checkpoints.
  assert {name: os.stat(os.path.join(config.workdir, name)).st_mtime_ns
          for name in before} == before
  assert _config_json(config.workdir) == json.loads(json.dumps(config.to_dict()))
  assert _checkpoints(config.workdir) == ["ckpt-2.index"]


def test_restart_moves_the_earlier_run_aside_and_trains_from_step_0(tmp_path, shapes_data_dir):
  config = small_config(tmp_path / "wd", shapes_data_dir, run_eval=True)
  train_and_eval.run(config, print_fn=_quiet)
  os.makedirs(os.path.join(config.workdir, "linear_eval"))  # An evaluation of its export.
  with open(os.path.join(config.workdir, "linear_eval", "results.json"), "w") as f:
    f.write("{}")
  earlier = sorted(os.listdir(config.workdir))
  lines = []
  changed = dataclasses.replace(config, lr=0.5)
  results = train_and_eval.run(changed, print_fn=lines.append, restart=True)
  assert results["step"] == 2
  (moved,) = [l for l in lines if l.startswith("--restart: the earlier run moved to ")]
  aside = moved.split(" moved to ", 1)[1]
  assert os.path.dirname(aside) == os.path.join(config.workdir, "replaced")
  assert sorted(os.listdir(aside)) == earlier  # The whole earlier run, its evaluation too.
  assert _config_json(aside)["lr"] == 0.1 and _config_json(config.workdir)["lr"] == 0.5
  assert not any(l.startswith("restored") for l in lines)  # From step 0.
  assert [l.split()[1] for l in lines if l.startswith("step ")] == ["1/2", "2/2"]
  assert sorted(os.listdir(config.workdir)) == [
      "checkpoints", "config.json", "export", "pretext_results.json", "replaced", "train"]
  with open(os.path.join(config.workdir, "pretext_results.json")) as f:
    assert json.load(f)["config"]["lr"] == 0.5


def test_what_only_acts_after_training_or_on_no_result_goes_on(tmp_path, shapes_data_dir):
  """The pretext evaluation's split, logging and checkpoint cadence change no training: the
  run goes on (here: is complete) and rewrites what those settings shape."""
  config = small_config(tmp_path / "wd", shapes_data_dir, run_eval=True)
  train_and_eval.run(config, print_fn=_quiet)
  lines = []
  other = dataclasses.replace(config, val_split="test[32:64]", log_every_steps=5,
                              eval_batch_size=8)
  train_and_eval.run(other, print_fn=lines.append)
  assert "training already complete: step 2 of 2" in lines
  with open(os.path.join(config.workdir, "pretext_results.json")) as f:
    assert json.load(f)["split"] == "test[32:64]"
  assert _config_json(config.workdir)["val_split"] == "test[32:64]"
  # Without --run_eval the earlier pretext results are not of this run: moved aside.
  lines.clear()
  train_and_eval.run(dataclasses.replace(other, run_eval=False), print_fn=lines.append)
  assert not os.path.exists(os.path.join(config.workdir, "pretext_results.json"))
  assert any(l.startswith("pretext_results.json of an earlier run moved to ") for l in lines)


def test_a_workdir_that_trained_nothing_takes_the_new_settings(tmp_path, shapes_data_dir):
  """An earlier run refused or killed before its first checkpoint left at most its config: the
  new settings start there, its files set aside."""
  workdir = tmp_path / "wd"
  os.makedirs(workdir / "train")
  config = small_config(workdir, shapes_data_dir)
  files.write_json_atomic(str(workdir / "config.json"), dict(config.to_dict(), lr=0.7))
  lines = []
  train_and_eval.run(config, print_fn=lines.append)
  (moved,) = [l for l in lines if " trained nothing: its files moved to " in l]
  assert "(lr 0.7 -> 0.1)" in moved
  assert sorted(os.listdir(moved.rsplit(" ", 1)[1])) == ["config.json", "train"]
  assert _config_json(workdir)["lr"] == 0.1


def test_training_further_goes_on_and_its_new_export_is_probed_anew(tmp_path, shapes_data_dir):
  """A longer --epochs on the step schedule goes on from the checkpoint (the rates up to there
  are the same); a shorter one than trained is refused. Then the probe command of the README
  probes the new export (not 'results for this config exist'), and the results of the earlier
  export move aside whole; an export of the same weights again is the same export."""
  config = small_config(tmp_path / "rot", shapes_data_dir, save_checkpoints_steps=1)
  train_and_eval.run(config, print_fn=_quiet)
  probe = linear_eval.LinearEvalConfig(
      workdir=str(tmp_path / "rot" / "linear_eval"), dataset="shapes_small",
      data_dir=shapes_data_dir, hub_module=config.export_dir, train_split="train[:32]",
      val_split="test[:16]", batch_size=16, lr_scale_batch_size=16, epochs=1)
  first = linear_eval.run_linear_eval(probe)
  assert first["source"]["fingerprint"] == files.export_fingerprint(config.export_dir)
  assert linear_eval.run_linear_eval(probe) == first  # The same export: reused.

  lines = []
  longer = dataclasses.replace(config, epochs=2)
  assert train_and_eval.run(longer, print_fn=lines.append)["step"] == 4  # Re-exported.
  assert "note: --epochs 1 -> 2: training goes on from step 2 to 4 (the step schedule is the " \
         "same up to there)" in lines
  assert f"restored {config.checkpoint_dir}/ckpt-2 at step 2" in lines
  assert [l.split()[1] for l in lines if l.startswith("step ")] == ["3/4", "4/4"]
  # The export was replaced by the one of the longer run, with nothing left beside it.
  assert export_lib.load_export_info(config.export_dir)["step"] == 4
  assert sorted(os.listdir(config.workdir)) == ["checkpoints", "config.json", "export",
                                                "linear_eval", "train"]
  with pytest.raises(ConfigError, match=r"\(epochs 2 -> 0\.5, up to step 4\)"):
    train_and_eval.run(dataclasses.replace(config, epochs=0.5), print_fn=_quiet)

  second = linear_eval.run_linear_eval(probe)
  assert second["source"]["fingerprint"] == files.export_fingerprint(config.export_dir)
  assert second["source"]["fingerprint"] != first["source"]["fingerprint"]
  assert second["layers"] != first["layers"]
  (aside,) = os.listdir(os.path.join(probe.workdir, "replaced"))
  with open(os.path.join(probe.workdir, "replaced", aside, "results.json")) as f:
    assert json.load(f) == first
  # Already complete: nothing is trained again; exported again, the same weights are the same
  # export, whose results are reused.
  lines.clear()
  assert train_and_eval.run(longer, print_fn=lines.append)["step"] == 4
  assert "training already complete: step 4 of 4" in lines
  assert linear_eval.run_linear_eval(probe) == second
  assert os.listdir(os.path.join(probe.workdir, "replaced")) == [aside]
