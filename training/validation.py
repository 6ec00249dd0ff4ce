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
  if config.export_teacher and not hasattr(method, "TEACHER"):
    with_one = [t for t in methods.TASKS.names() if hasattr(methods.get_method(t), "TEACHER")]
    raise ConfigError(f"--export_teacher: --task={config.task} has no teacher; the tasks with "
                      f"one: {', '.join(with_one)}")
  if config.local_crops and not getattr(method, "TAKES_LOCAL_VIEWS", False):
    with_them = [t for t in methods.TASKS.names()
                 if getattr(methods.get_method(t), "TAKES_LOCAL_VIEWS", False)]
    raise ConfigError(f"--local_crops={config.local_crops}: --task={config.task} does not use "
                      f"multi-crop's local views; the tasks that do: {', '.join(with_them)}")
  if check_data:
    check_split(config.dataset, config.data_dir, "train_split", config.train_split,
                at_least=config.batch_size,
                why=f"one training batch (--batch_size={config.batch_size})")
    check_split(config.dataset, config.data_dir, "val_split", config.val_split,
                at_least=1 if config.run_eval else 0, why="the pretext evaluation (--run_eval)")
    if getattr(method, "USES_LABELS", False):
      check_classes(config.dataset, config.data_dir, {"train_split": config.train_split},
                    f"--task={config.task} trains on the labels")


def check_input_side(config: Config) -> None:
  """A ConfigError where the images the method gives its backbone (a patch, a view) are smaller
  than the architecture can be built on (ArchitectureFacts.min_input_side), or where the method's
  own `check_input_shape(config, shape)` refuses them (a dense decoder's sizes). Apart from
  `validate`: it builds the input pipeline (which starts TensorFlow's runtime)."""
  least = architectures.facts(config.architecture).min_input_side
  method = methods.get_method(config.task)
  own_check = getattr(method, "check_input_shape", None)
  if least <= 1 and own_check is None:
    return
  from training import footprint  # pylint: disable=g-import-not-at-top
  shape = method.serving_input_shape(footprint.example_shape(
      config, config.train_split, True, config.preprocessing, datasets.PreprocessConfig.of(config)))
  sizes = [(tuple(shape[:2]), "--resize_size, --crop_size")]
  if config.local_crops:  # Multi-crop's local views go through the backbone too.
    sizes.append((datasets.as_hw(config.local_crop_size, "local_crop_size"),
                  "--local_crop_size"))
  for (height, width), flags in sizes:
    if min(height, width) < least:
      fits = [a for a, f in architectures.ARCHITECTURES.items()
              if f.min_input_side <= min(height, width)]
      raise ConfigError(
          f"--architecture={config.architecture} needs inputs of at least {least}x{least}; "
          f"--task={config.task} with --preprocessing={config.preprocessing!r} gives its "
          f"backbone {height}x{width}: make the images, patches or views larger (e.g. {flags}) "
          f"or use {', '.join(fits)}")
  if own_check is not None:  # After the sides: it builds the model on them.
    own_check(config, tuple(shape))


def dataset_info(dataset: str, data_dir):
  """The dataset's info (datasets.get_dataset_info), or a ConfigError naming --dataset."""
  try:
    return datasets.get_dataset_info(dataset, data_dir)
  except ValueError as e:
    raise ConfigError(f"--dataset={dataset!r}: {e}") from None


def check_split(dataset: str, data_dir, flag: str, split: str, at_least: int = 1,
                why: str = "") -> int:
  """The examples of `split` (the value of --`flag`); a ConfigError naming the flag, the value
  and the dataset's splits where it does not exist or has fewer than `at_least` (for `why`)."""
  info = dataset_info(dataset, data_dir)

  def splits() -> str:
    return f"splits of {dataset}: " + ", ".join(f"{k} ({v} examples)"
                                                 for k, v in info.splits.items())

  try:
    num = datasets.get_num_examples(dataset, split, data_dir)
  except ValueError as e:
    raise ConfigError(f"--{flag}={split!r}: {str(e).split('; splits: ')[0]}; {splits()}"
                      ) from None
  if num < at_least:
    have = "no examples" if num == 0 else f"{num} example{'s' * (num != 1)}"
    raise ConfigError(f"--{flag}={split!r} of {dataset} has {have}; {why} needs at least "
                      f"{at_least}; {splits()}")
  return num


def check_classes(dataset: str, data_dir, splits, why: str) -> None:
  """At least two classes in the dataset and in each split of `splits` ({flag: split}) whose
  classes can be counted without reading it (image folders); a ConfigError saying `why` they
  are needed otherwise."""
  info = dataset_info(dataset, data_dir)
  if info.num_classes < 2:
    names = f" ({', '.join(info.class_names)})" if info.class_names else ""
    raise ConfigError(f"--dataset={dataset!r} has {info.num_classes} class{names}: {why}, which "
                      "needs at least 2")
  for flag, split in splits.items():
    present = datasets.split_classes(dataset, split, data_dir)
    if present is not None and len(present) < 2:
      raise ConfigError(f"--{flag}={split!r} of {dataset} holds images of "
                        f"{len(present)} class{'' if len(present) == 1 else 'es'} "
                        f"({', '.join(present) or 'none'}): {why}, which needs at least 2")
