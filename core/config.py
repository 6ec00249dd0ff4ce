"""The pretext-training config: plain data with one field per option of the pretext config
(core/options.py), made from the flags by train_and_eval.py and checked by
training/validation.py before any work starts."""

import dataclasses
import os

from core import architectures
from core import files
from core import options
from core.errors import ConfigError


class _ConfigMethods:
  """What a Config knows beyond its fields."""

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.workdir, "checkpoints")

  @property
  def export_dir(self) -> str:
    return os.path.join(self.workdir, files.EXPORT_DIR)

  def resolved_weight_decay(self) -> float:
    if self.weight_decay is not None:
      return self.weight_decay
    return architectures.facts(self.architecture).weight_decay

  def resolved_filters_factor(self) -> int:
    if self.filters_factor is not None:
      return self.filters_factor
    return architectures.facts(self.architecture).filters_factor

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


Config = options.make_config("Config", options.PRETEXT, _ConfigMethods, __name__, frozen=True)
Config.__doc__ = ("Everything one pretext-training (or pretext-evaluation) run needs: a field per "
                  "option of core/options.py's pretext config, named and defaulted as the flag.")


def check_replicas(config, num_replicas: int) -> None:
  """The global batches must split evenly over the replicas."""
  for flag, size in (("batch_size", config.batch_size),
                     ("eval_batch_size", config.eval_batch_size or config.batch_size)):
    if size % num_replicas:
      raise ConfigError(f"--{flag}={size} is not divisible by the number of replicas "
                        f"({num_replicas}); use a multiple of {num_replicas}")
