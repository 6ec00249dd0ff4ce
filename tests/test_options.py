"""One definition of each option (core/options.py): the flags, the config dataclasses, the grid
runner's knowledge of the flags and the implementations' names all come from it; every flagfile
and grid file of configs/ still loads."""

import dataclasses
import glob
import os

from absl import flags
import pytest

from core import architectures
from core import options
from core.config import Config
from core.errors import ConfigError
from eval import fine_tune
from eval import heads
from eval import linear_eval
from eval import pooling
from grid import flags as grid_flags
from grid import gridfile
import methods
import models
from tests.conftest import REPO_ROOT
import train_and_eval
from training import validation


def _fresh_flags() -> flags.FlagValues:
  values = flags.FlagValues()
  options.define_flags(values)
  return values


def test_the_configs_have_a_field_per_option_of_theirs():
  assert [f.name for f in dataclasses.fields(Config)] == [
      o.name for o in options.of(options.PRETEXT)]
  eval_fields = [f.name for f in dataclasses.fields(linear_eval.LinearEvalConfig)]
  names = [o.name for o in options.of(options.EVAL)]
  assert eval_fields[:len(names)] == names
  assert eval_fields[len(names):] == ["layers", "max_features", "standardize_features",
                                      "preprocess_params", "knn_temperature"]
  # Defaults are the flags' (architecture: the evaluation's own, stated there; its heads' rates
  # and decays are grids of their own).
  assert Config(task="rotation", workdir="w").epochs == options.OPTIONS["epochs"].default == 90
  evaluation = linear_eval.LinearEvalConfig()
  assert evaluation.epochs == 90 and evaluation.decay_epochs == ()
  assert evaluation.architecture is None and not hasattr(evaluation, "weight_decay")
  assert evaluation.probe_lrs == (0.1,) and len(evaluation.probe_weight_decays) == 7
  assert evaluation.probe_decorrelate is True
  assert Config(task="rotation", workdir="w").weight_decay is None


def test_the_flags_are_the_options():
  defined = train_and_eval.FLAGS.flags_by_module_dict()["train_and_eval"]
  assert sorted(f.name for f in defined) == sorted(list(options.OPTIONS) + list(options.ALIASES)
                                                   + list(train_and_eval.PROGRAM_FLAGS))
  for flag in defined:
    if flag.name in train_and_eval.PROGRAM_FLAGS:  # How the program runs: no config has them.
      continue
    if flag.name in options.ALIASES:
      assert flag.help == f"Alias for --{options.ALIASES[flag.name]}."
      continue
    option = options.OPTIONS[flag.name]
    default = list(option.default) if isinstance(option.default, tuple) else option.default
    help_text = option.help
    if option.kind == "enum":  # absl puts the choices first.
      assert list(flag.parser.enum_values) == list(option.choices)
      help_text = f"<{'|'.join(option.choices)}>: {option.help}"
    assert flag.default == default and flag.help == help_text, flag.name
  # The grid runner knows them in this process, with the same kinds, defaults and choices.
  known = grid_flags.known_flags()
  assert set(known) == set(options.OPTIONS) | set(options.ALIASES)
  assert known["mode"] == grid_flags.FlagInfo("enum", "v2", ("v1", "v2"))
  assert known["strategy"].choices == ("default", "mirrored", "multi_worker", "tpu")
  assert known["dataset_dir"] == known["data_dir"]


def test_the_names_of_the_choices_are_the_implementations():
  assert tuple(heads.EVAL_MODELS.names()) == tuple(sorted(options.EVAL_MODELS))
  assert tuple(pooling.COMBINE_MODES.names()) == tuple(sorted(options.COMBINE_MODES))
  assert pooling.POOL_MODES == options.POOL_MODES
  assert tuple(models.ARCHITECTURES.names()) == tuple(sorted(architectures.ARCHITECTURES))
  for name in methods.TASKS.names():
    assert name in options.OPTIONS["task"].help
  for name in architectures.ARCHITECTURES:
    assert models.end_point_names(name) == list(architectures.facts(name).end_points)
    assert models.default_filters_factor(name) == architectures.facts(name).filters_factor


def test_values_from_flags_and_their_errors():
  values = _fresh_flags()
  values(["x", "--resize_size=32", "--crop_size=24,28", "--decay_epochs=3,6.5",
          "--serving_input_shape=None,64,64,3", "--dataset_dir=/data"])
  got = options.values_from_flags(values)
  assert got["resize_size"] == (32, 32) and got["crop_size"] == (24, 28)
  assert got["decay_epochs"] == (3.0, 6.5) and got["serving_input_shape"] == (64, 64, 3)
  assert got["data_dir"] == "/data" and got["preprocessing"] is None
  for argv, message in ((["--resize_size=0"], "--resize_size=0 must be H or H,W positive"),
                        (["--decay_epochs=3,x"], "--decay_epochs=3,x must be numbers"),
                        (["--serving_input_shape=64,64"], "must be H,W,C")):
    bad = _fresh_flags()
    bad(["x", *argv])
    with pytest.raises(ConfigError, match=message):
      options.values_from_flags(bad)


@pytest.mark.parametrize("overrides, message", [
    (dict(optimizer="adagrad"), r"--optimizer='adagrad' is not valid; choices: sgd, adam"),
    (dict(lr=0.0), r"--lr must be a positive number, got 0.0"),
    (dict(eval_batch_size=0), r"--eval_batch_size must be a positive integer or None, got 0"),
    (dict(grayscale_probability=1.5), r"--grayscale_probability must be in \[0, 1\]"),
    (dict(warmup_epochs=5.0), r"--warmup_epochs=5 is longer than the run \(--epochs=2\); "
                              r"pass --warmup_epochs between 0 and 2"),
    (dict(decay_epochs=(1.0, 2.0)), r"--decay_epochs=1,2: 2 at or after the end of the run "
                                    r"\(--epochs=2\) would never act; pass decays below 2 "
                                    r"\(--decay_epochs=1\)"),
    (dict(weight_decay=-1.0), r"--weight_decay must be a number >= 0, got -1.0"),
])
def test_one_check_per_option_for_both_configs(overrides, message):
  config = Config(task="rotation", workdir="w", preprocessing="resize,-1_to_1,rotate",
                  resize_size=(32, 32), epochs=2.0)
  with pytest.raises(ConfigError, match=message):
    options.check_values(dataclasses.replace(config, **overrides), options.PRETEXT)
  shared = {k: v for k, v in overrides.items() if k in {o.name for o in options.of(options.EVAL)}}
  if shared:
    evaluation = linear_eval.LinearEvalConfig(workdir="w", hub_module="/x", epochs=2.0,
                                              **shared)
    with pytest.raises(ConfigError, match=message):
      options.check_values(evaluation, options.EVAL)


def _flagfiles(kind):
  paths = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "*", "*.flags")))
  evaluation = [p for p in paths
                if os.path.basename(os.path.dirname(p)) in ("evaluation", "fine_tune")]
  return evaluation if kind == "evaluation" else [p for p in paths if p not in evaluation]


@pytest.mark.parametrize("path", _flagfiles("pretext"), ids=os.path.basename)
def test_every_pretext_flagfile_makes_a_valid_config(path):
  values = _fresh_flags()
  values(["x", f"--flagfile={path}", "--workdir=/tmp/unused"])
  config = Config(**options.config_kwargs(options.values_from_flags(values), options.PRETEXT))
  validation.validate(config, check_data=False)
  assert grid_flags.read_flagfile(path, grid_flags.known_flags())["task"] == config.task


@pytest.mark.parametrize("path", _flagfiles("evaluation"), ids=os.path.basename)
def test_every_evaluation_flagfile_makes_a_valid_config(path):
  values = _fresh_flags()
  values(["x", f"--flagfile={path}", "--workdir=/tmp/unused", "--hub_module=random_init",
          "--eval_preprocessing=resize,-1_to_1", "--resize_size=32"])
  evaluation = fine_tune if values["task"].value == "fine_tune" else linear_eval
  config = evaluation.config_from_values(options.values_from_flags(values))
  evaluation.validate_config(config, check_data=False)
  assert values["task"].value in options.EVALUATION_TASKS
  assert config.hub_module is None and config.architecture == "resnet50"
  assert config.preprocess_params["resize_size"] == (32, 32)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "grids",
                                                               "*.toml"))),
                         ids=os.path.basename)
def test_every_grid_file_loads(path):
  grid = gridfile.load_grid(path, grid_flags.known_flags())
  assert grid.cells and len(set(grid.names())) == len(grid.cells)
