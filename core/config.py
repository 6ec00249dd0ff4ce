"""The experiment config: plain data made from the flags, validated before any work starts."""

import dataclasses
import math
import os
from typing import Optional, Tuple

from core import architectures
from core.architectures import MODES


class ConfigError(ValueError):
  """A config value is invalid; the message names the flag, the value and what is valid."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything one pretext-training (or pretext-evaluation) run needs. Field names follow the flags."""
  task: str
  workdir: str
  dataset: str = "shapes"
  data_dir: Optional[str] = None
  train_split: str = "train"
  val_split: str = "test"
  # Model.
  architecture: str = "resnet50"
  filters_factor: Optional[int] = None    # None: the architecture's standard width
  mode: str = "v2"
  last_relu: bool = True
  zero_init_residual: bool = False        # ResNet/RevNet residual branches start at zero
  # Preprocessing.
  preprocessing: str = ""
  resize_size: Optional[Tuple[int, int]] = None
  smaller_size: Optional[int] = None
  crop_size: Optional[Tuple[int, int]] = None
  grayscale_probability: float = 0.0
  splits_per_side: int = 3                # crop_patches grid (jigsaw, relative_patch_location)
  patch_jitter: int = 0
  num_of_inception_patches: int = 8       # exemplar copies per image
  # Pretext heads.
  embed_dim: int = 1000                   # per-patch / per-copy embedding size
  num_permutations: int = 100             # jigsaw: size of the generated permutation set
  perm_subset_size: int = 8               # jigsaw: permutations per training batch
  margin: float = 0.5                     # exemplar: triplet loss margin
  # Optimisation.
  batch_size: int = 256
  eval_batch_size: Optional[int] = None   # None: batch_size
  optimizer: str = "sgd"
  lr: float = 0.1
  lr_scale_batch_size: int = 256
  epochs: float = 90.0
  warmup_epochs: float = 0.0
  decay_epochs: Tuple[float, ...] = ()
  lr_decay_factor: float = 0.1
  weight_decay: Optional[float] = None    # None: the architecture's default
  random_seed: int = 0
  # Running.
  strategy: str = "default"
  jit_compile: bool = False
  precision: str = "float32"              # or mixed_float16 / mixed_bfloat16 (accelerators)
  shuffle_buffer: int = 10_000
  save_checkpoints_steps: Optional[int] = None
  save_checkpoints_secs: Optional[float] = 600.0
  keep_checkpoint_max: int = 3
  log_every_steps: int = 50
  run_eval: bool = False
  serving_input_shape: Optional[Tuple[int, int, int]] = None

  @property
  def checkpoint_dir(self) -> str:
    return os.path.join(self.workdir, "checkpoints")

  @property
  def export_dir(self) -> str:
    return os.path.join(self.workdir, "export")

  def resolved_weight_decay(self) -> float:
    if self.weight_decay is not None:
      return self.weight_decay
    return architectures.facts(self.architecture).weight_decay

  def resolved_filters_factor(self) -> int:
    if self.filters_factor is not None:
      return self.filters_factor
    return architectures.facts(self.architecture).filters_factor

  def preprocess_config(self):
    """The preprocessing parameters, as the data pipeline takes them."""
    import datasets  # pylint: disable=g-import-not-at-top
    return datasets.PreprocessConfig(
        resize_size=self.resize_size, smaller_size=self.smaller_size, crop_size=self.crop_size,
        grayscale_probability=self.grayscale_probability, splits_per_side=self.splits_per_side,
        patch_jitter=self.patch_jitter, num_of_inception_patches=self.num_of_inception_patches)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


OPTIMIZERS = ("sgd", "adam")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def _check(condition: bool, message: str):
  if not condition:
    raise ConfigError(message)


def validate(config: Config, check_data: bool = True) -> None:
  """Fails with a one-line ConfigError on any unknown name or impossible combination.

  With `check_data`, also checks that the dataset and its splits exist (it may prepare the
  embedded dataset on first use).
  """
  import datasets  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  import models  # pylint: disable=g-import-not-at-top

  _check(bool(config.task), "--task is required, e.g. --task=rotation")
  _check(bool(config.workdir), "--workdir is required: the directory for checkpoints, "
         "summaries and the export")
  try:
    method = methods.get_method(config.task)
  except ValueError as e:
    raise ConfigError(f"{e} (or linear_eval, for per-layer evaluation)") from None
  try:
    models.ARCHITECTURES.get(config.architecture)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _check(config.mode in MODES, f"--mode={config.mode!r} is not valid; choices: {', '.join(MODES)}")
  _check(config.optimizer in OPTIMIZERS,
         f"--optimizer={config.optimizer!r} is not valid; choices: {', '.join(OPTIMIZERS)}")
  _check(config.strategy in STRATEGIES,
         f"--strategy={config.strategy!r} is not valid; choices: {', '.join(STRATEGIES)}")
  _check(config.precision in PRECISIONS,
         f"--precision={config.precision!r} is not valid; choices: {', '.join(PRECISIONS)}")
  _check(config.filters_factor is None or config.filters_factor > 0,
         f"--filters_factor must be a positive integer, got {config.filters_factor}")
  _check(config.batch_size > 0, f"--batch_size must be positive, got {config.batch_size}")
  _check(config.eval_batch_size is None or config.eval_batch_size > 0,
         f"--eval_batch_size must be positive, got {config.eval_batch_size}")
  _check(config.lr > 0, f"--lr must be positive, got {config.lr}")
  _check(config.lr_scale_batch_size > 0,
         f"--lr_scale_batch_size must be positive, got {config.lr_scale_batch_size}")
  _check(config.epochs > 0 and math.isfinite(config.epochs),
         f"--epochs must be a positive number, got {config.epochs}")
  _check(0 <= config.warmup_epochs <= config.epochs,
         f"--warmup_epochs must be in [0, --epochs={config.epochs}], got {config.warmup_epochs}")
  _check(list(config.decay_epochs) == sorted(config.decay_epochs),
         f"--decay_epochs must be increasing, got {list(config.decay_epochs)}")
  _check(config.weight_decay is None or config.weight_decay >= 0,
         f"--weight_decay must be >= 0, got {config.weight_decay}")
  _check(0.0 <= config.grayscale_probability <= 1.0,
         f"--grayscale_probability must be in [0, 1], got {config.grayscale_probability}")
  for flag in ("splits_per_side", "num_of_inception_patches", "embed_dim", "num_permutations",
               "perm_subset_size"):
    _check(getattr(config, flag) > 0, f"--{flag} must be a positive integer, got "
           f"{getattr(config, flag)}")
  _check(config.patch_jitter >= 0, f"--patch_jitter must be >= 0, got {config.patch_jitter}")
  _check(config.margin >= 0 and math.isfinite(config.margin),
         f"--margin must be a number >= 0, got {config.margin}")
  _check(config.log_every_steps > 0,
         f"--log_every_steps must be positive, got {config.log_every_steps}")
  _check(bool(config.preprocessing), "--preprocessing is required, e.g. "
         "'resize,crop,flip_lr,-1_to_1,rotate'")
  try:
    datasets.validate_spec(config.preprocessing, config.preprocess_config())
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


def check_replicas(config: Config, num_replicas: int) -> None:
  """The global batches must split evenly over the replicas."""
  for flag, size in (("batch_size", config.batch_size),
                     ("eval_batch_size", config.eval_batch_size or config.batch_size)):
    _check(size % num_replicas == 0,
           f"--{flag}={size} is not divisible by the number of replicas ({num_replicas}); "
           f"use a multiple of {num_replicas}")
