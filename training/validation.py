"""The checks of a pretext config before any work starts: every option's value
(core/options.py), the names that registries hold (task, architecture, preprocessing ops), the
method's own requirements, and that the dataset and its splits exist."""

from core import architectures
from core import options
from core.config import Config
from core.errors import ConfigError
import datasets
import methods


def validate(config: Config, check_data: bool = True) -> None:
  """Fails with a one-line ConfigError on any unknown name or impossible combination.

  With `check_data`, also checks that the dataset and its splits exist (it may prepare the
  embedded dataset on first use).
  """
  if not config.task:
    raise ConfigError("--task is required, e.g. --task=rotation")
  if not config.workdir:
    raise ConfigError("--workdir is required: the directory for checkpoints, summaries and the "
                      "export")
  try:
    method = methods.get_method(config.task)
  except ValueError as e:
    raise ConfigError(f"{e} (or an evaluation of an export: "
                      f"{', '.join(options.EVALUATION_TASKS)})") from None
  try:
    architectures.facts(config.architecture)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  options.check_values(config, options.PRETEXT)
  if not config.preprocessing:
    raise ConfigError("--preprocessing is required, e.g. 'resize,crop,flip_lr,-1_to_1,rotate'")
  try:
    datasets.validate_spec(config.preprocessing, datasets.PreprocessConfig.of(config))
  except ValueError as e:
    raise ConfigError(f"--preprocessing={config.preprocessing!r}: {e}") from None
  method.validate(config)
  if check_data:
    try:
      info = datasets.get_dataset_info(config.dataset, config.data_dir)
    except ValueError as e:
      raise ConfigError(f"--dataset={config.dataset!r}: {e}") from None
    for flag, split in (("train_split", config.train_split), ("val_split", config.val_split)):
      try:
        datasets.get_num_examples(config.dataset, split, config.data_dir)
      except ValueError as e:
        raise ConfigError(f"--{flag}={split!r}: {e}; splits of {config.dataset}: "
                          f"{', '.join(info.splits)}") from None
