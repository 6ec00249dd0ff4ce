"""Trains a backbone on a pretext task and exports it, or evaluates an exported backbone.

  python train_and_eval.py --flagfile=configs/rotation/shapes.flags --workdir=workdirs/rot
  python train_and_eval.py --flagfile=configs/evaluation/shapes.flags \
      --hub_module=workdirs/rot/export --workdir=workdirs/rot/linear_eval

Training resumes from the latest checkpoint in --workdir. At the end the backbone is exported to
<workdir>/export (SavedModel with `serving_default` and `representation` signatures);
--run_eval also evaluates the pretext task on --val_split into <workdir>/pretext_results.json.
--task=linear_eval trains one linear (or MLP) classifier per layer of the frozen backbone given
by --hub_module (an export, or `random_init` for a fresh --architecture) and writes
<workdir>/results.json.
"""

import dataclasses
import os
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS

# Experiment.
flags.DEFINE_string("task", None, "Pretext task (rotation, jigsaw, relative_patch_location, "
                    "exemplar, supervised), or linear_eval.")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, summaries, export and results.")
flags.DEFINE_boolean("run_eval", False, "After training, evaluate the pretext task on --val_split "
                     "(loss, accuracy) into <workdir>/pretext_results.json.")
flags.DEFINE_integer("random_seed", 0, "Seed for initialisation, shuffling and augmentation.")
# Data.
flags.DEFINE_string("dataset", "shapes", "Dataset: the embedded 'shapes' (or 'shapes_small'), a "
                    "TFDS name such as imagenet2012, places365_small, cifar10, or "
                    "'folder:<root>' for images in <root>/<split>/<class>/*.jpg|png.")
flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's own default).")
flags.DEFINE_alias("dataset_dir", "data_dir")
flags.DEFINE_string("train_split", "train", "Split to train on (TFDS slicing like "
                    "'train[:90%]' allowed).")
flags.DEFINE_string("val_split", "test", "Split for evaluation.")
flags.DEFINE_integer("shuffle_buffer", 10_000, "Examples in the shuffle buffer.")
# Preprocessing.
flags.DEFINE_string("preprocessing", None, "Comma-separated preprocessing ops, e.g. "
                    "'resize,crop,flip_lr,-1_to_1,rotate'.")
flags.DEFINE_list("resize_size", None, "Size for 'resize': H or H,W.")
flags.DEFINE_list("crop_size", None, "Size for the crop ops: H or H,W.")
flags.DEFINE_integer("smaller_size", None, "Shorter side for 'resize_small'.")
flags.DEFINE_float("grayscale_probability", 0.0, "Probability of 'to_gray' in training.")
flags.DEFINE_integer("splits_per_side", 3, "'crop_patches': the image is split into a "
                     "splits_per_side x splits_per_side grid of patches.")
flags.DEFINE_integer("patch_jitter", 0, "'crop_patches': patches are their grid cell less this "
                     "many pixels per side, randomly placed in the cell in training.")
flags.DEFINE_integer("num_of_inception_patches", 8, "'exemplar_copies': augmented copies per "
                     "image.")
# Model.
flags.DEFINE_string("architecture", "resnet50", "Backbone: resnet50, revnet50, vgg19.")
flags.DEFINE_integer("filters_factor", None, "Width factor (standard width: 4 for ResNet and "
                     "RevNet, 8 for VGG; default).")
flags.DEFINE_enum("mode", "v2", ["v1", "v2"], "ResNet version: v1 post-activation, v2 "
                  "pre-activation.")
flags.DEFINE_boolean("last_relu", True, "Apply the network's final ReLU (ResNet).")
flags.DEFINE_boolean("zero_init_residual", False, "Pretext training: start every residual "
                     "branch of ResNet / RevNet at zero (last BN scale in v1, last conv in v2 and "
                     "RevNet), so that short runs leave chance level sooner. Off in the 2019 "
                     "code; the random-init baseline keeps the standard initialisation.")
# Pretext heads.
flags.DEFINE_integer("embed_dim", 1000, "jigsaw, relative_patch_location, exemplar: size of the "
                     "per-patch (per-copy) embedding, the backbone's logits layer.")
flags.DEFINE_integer("num_permutations", 100, "jigsaw: permutations in the generated set (the "
                     "classes).")
flags.DEFINE_integer("perm_subset_size", 8, "jigsaw: permutations drawn per training batch; "
                     "each image is shown in all of them (evaluation uses all).")
flags.DEFINE_float("margin", 0.5, "exemplar: margin of the triplet semi-hard loss.")
# Optimisation.
flags.DEFINE_integer("batch_size", 256, "Global training batch size (source images).")
flags.DEFINE_integer("eval_batch_size", None, "Global evaluation batch size (default: "
                     "--batch_size).")
flags.DEFINE_string("optimizer", "sgd", "sgd (momentum 0.9) or adam.")
flags.DEFINE_float("lr", 0.1, "Learning rate for a batch of --lr_scale_batch_size.")
flags.DEFINE_integer("lr_scale_batch_size", 256, "Batch size --lr is given for; the rate is "
                     "scaled linearly to --batch_size.")
flags.DEFINE_float("epochs", 90, "Training epochs (fractions allowed).")
flags.DEFINE_float("warmup_epochs", 0, "Epochs of linear warm-up.")
flags.DEFINE_list("decay_epochs", [], "Epochs at which the rate is multiplied by "
                  "--lr_decay_factor.")
flags.DEFINE_float("lr_decay_factor", 0.1, "Factor applied at each of --decay_epochs.")
flags.DEFINE_float("weight_decay", None, "L2 weight decay (default: 1e-4, VGG 5e-4).")
# Running.
flags.DEFINE_string("strategy", "default", "tf.distribute strategy: default (one device), "
                    "mirrored (all local GPUs, or logical CPU devices), multi_worker (the hosts "
                    "of TF_CONFIG, or the tasks of the SLURM job step when srun started it; run "
                    "the same command on each, with a --workdir they all see) or tpu (TPU_NAME, "
                    "default the local TPU). With more than one replica, batch norm statistics "
                    "are synchronised across replicas.")
flags.DEFINE_boolean("jit_compile", False, "XLA-compile the training step (slower on CPU).")
flags.DEFINE_string("precision", "float32",
                    "float32, mixed_float16 or mixed_bfloat16: the compute dtype. mixed_* keep "
                    "float32 variables and compute in 16 bits (GPU: mixed_float16, with dynamic "
                    "loss scaling; TPU and recent GPUs: mixed_bfloat16). Slower on CPU. A "
                    "workdir keeps the precision it was started with.")
flags.DEFINE_integer("save_checkpoints_steps", None, "Save a checkpoint every N steps.")
flags.DEFINE_float("save_checkpoints_secs", 600, "Save a checkpoint every N seconds.")
flags.DEFINE_integer("keep_checkpoint_max", 3, "Checkpoints to keep.")
flags.DEFINE_integer("log_every_steps", 50, "Steps between progress lines and summaries.")
flags.DEFINE_string("serving_input_shape", None, "Export input shape H,W,C (a leading 'None' "
                    "batch dimension is accepted); default: the training input's image shape.")

# Per-layer evaluation (--task=linear_eval).
flags.DEFINE_string("hub_module", None, "linear_eval: the export to evaluate "
                    "(<pretext workdir>/export), or 'random_init' for a randomly initialised "
                    "--architecture/--filters_factor/--mode (the baseline).")
flags.DEFINE_enum("eval_model", "linear", ["linear", "mlp"], "linear_eval: head per layer.")
flags.DEFINE_integer("channels_hidden", 1000, "linear_eval: hidden units of the mlp head.")
flags.DEFINE_enum("pool_mode", "adaptive_max", ["adaptive_max", "adaptive_avg", "max", "avg"],
                  "linear_eval: pooling of end points with more than 9000 features.")
flags.DEFINE_enum("combine_patches", "avg_pool", ["avg_pool", "max_pool", "concat"],
                  "linear_eval: how per-patch features of patch inputs are combined.")
flags.DEFINE_string("eval_preprocessing", None, "linear_eval: deterministic preprocessing of "
                    "both splits (default: the export's).")
flags.DEFINE_boolean("on_the_fly", False, "linear_eval: the original protocol (training "
                     "--preprocessing with augmentation through the frozen backbone every step) "
                     "instead of cached features.")
flags.DEFINE_integer("knn_k", None, "linear_eval: also report k-nearest-neighbour accuracy "
                     "with this k.")
flags.DEFINE_float("train_fraction", None, "linear_eval: train the heads on this fraction of "
                   "each class (low-label evaluation).")
flags.DEFINE_integer("examples_per_class", None, "linear_eval: train the heads on this many "
                     "examples of each class (low-label evaluation).")
flags.DEFINE_string("feature_cache_dir", None, "linear_eval: directory to cache extracted "
                    "features in (default: memory only).")
flags.DEFINE_boolean("force", False, "linear_eval: re-run even if results for the same config "
                     "exist.")

RANDOM_INIT = "random_init"

# Settings that must match an earlier run in the same workdir for its checkpoints to be resumed
# (precision: the checkpoint of a mixed_float16 run holds a loss-scale optimizer). A config.json
# written before a field existed is read with the field's default.
_IDENTITY_FIELDS = ("task", "architecture", "filters_factor", "mode", "last_relu", "dataset",
                    "precision")


def _size(values, flag):
  if not values:
    return None
  try:
    sizes = tuple(int(v) for v in values)
  except ValueError:
    raise app.UsageError(f"--{flag}={','.join(values)} must be H or H,W integers") from None
  if len(sizes) not in (1, 2) or min(sizes) <= 0:
    raise app.UsageError(f"--{flag}={','.join(values)} must be H or H,W positive integers")
  return sizes * (3 - len(sizes)) if len(sizes) == 1 else sizes


def _serving_shape(value):
  if not value:
    return None
  parts = [p.strip() for p in value.split(",")]
  if len(parts) == 4 and parts[0].lower() == "none":
    parts = parts[1:]
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) <= 0:
    raise app.UsageError(f"--serving_input_shape={value!r} must be H,W,C (optionally None,H,W,C)")
  return shape


def config_from_flags():
  """The flags as one Config object."""
  from core.config import Config  # pylint: disable=g-import-not-at-top
  try:
    decay_epochs = tuple(float(e) for e in FLAGS.decay_epochs)
  except ValueError:
    raise app.UsageError(f"--decay_epochs={','.join(FLAGS.decay_epochs)} must be numbers") from None
  return Config(
      task=FLAGS.task, workdir=FLAGS.workdir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      train_split=FLAGS.train_split, val_split=FLAGS.val_split,
      architecture=FLAGS.architecture, filters_factor=FLAGS.filters_factor, mode=FLAGS.mode,
      last_relu=FLAGS.last_relu, zero_init_residual=FLAGS.zero_init_residual,
      preprocessing=FLAGS.preprocessing or "",
      resize_size=_size(FLAGS.resize_size, "resize_size"), smaller_size=FLAGS.smaller_size,
      crop_size=_size(FLAGS.crop_size, "crop_size"),
      grayscale_probability=FLAGS.grayscale_probability,
      splits_per_side=FLAGS.splits_per_side, patch_jitter=FLAGS.patch_jitter,
      num_of_inception_patches=FLAGS.num_of_inception_patches, embed_dim=FLAGS.embed_dim,
      num_permutations=FLAGS.num_permutations, perm_subset_size=FLAGS.perm_subset_size,
      margin=FLAGS.margin, batch_size=FLAGS.batch_size,
      eval_batch_size=FLAGS.eval_batch_size, optimizer=FLAGS.optimizer, lr=FLAGS.lr,
      lr_scale_batch_size=FLAGS.lr_scale_batch_size, epochs=FLAGS.epochs,
      warmup_epochs=FLAGS.warmup_epochs, decay_epochs=decay_epochs,
      lr_decay_factor=FLAGS.lr_decay_factor, weight_decay=FLAGS.weight_decay,
      random_seed=FLAGS.random_seed, strategy=FLAGS.strategy, jit_compile=FLAGS.jit_compile,
      precision=FLAGS.precision,
      shuffle_buffer=FLAGS.shuffle_buffer, save_checkpoints_steps=FLAGS.save_checkpoints_steps,
      save_checkpoints_secs=FLAGS.save_checkpoints_secs,
      keep_checkpoint_max=FLAGS.keep_checkpoint_max, log_every_steps=FLAGS.log_every_steps,
      run_eval=FLAGS.run_eval, serving_input_shape=_serving_shape(FLAGS.serving_input_shape))


def linear_eval_config_from_flags():
  """The flags as one LinearEvalConfig."""
  from eval.linear_eval import LinearEvalConfig  # pylint: disable=g-import-not-at-top
  random_init = FLAGS.hub_module == RANDOM_INIT
  size_flags = dict(resize_size=_size(FLAGS.resize_size, "resize_size"),
                    crop_size=_size(FLAGS.crop_size, "crop_size"),
                    smaller_size=FLAGS.smaller_size)
  params = None
  if random_init or any(v is not None for v in size_flags.values()):
    params = dict(size_flags, grayscale_probability=FLAGS.grayscale_probability,
                  splits_per_side=FLAGS.splits_per_side, patch_jitter=FLAGS.patch_jitter)
  try:
    decay_epochs = tuple(float(e) for e in FLAGS.decay_epochs)
  except ValueError:
    raise app.UsageError(f"--decay_epochs={','.join(FLAGS.decay_epochs)} must be numbers") from None
  return LinearEvalConfig(
      workdir=FLAGS.workdir, dataset=FLAGS.dataset, data_dir=FLAGS.data_dir,
      train_split=FLAGS.train_split, val_split=FLAGS.val_split,
      hub_module=None if random_init else FLAGS.hub_module,
      architecture=FLAGS.architecture if random_init else None,
      filters_factor=FLAGS.filters_factor, mode=FLAGS.mode, last_relu=FLAGS.last_relu,
      pool_mode=FLAGS.pool_mode, combine_patches=FLAGS.combine_patches,
      eval_model=FLAGS.eval_model, channels_hidden=FLAGS.channels_hidden, lr=FLAGS.lr,
      lr_scale_batch_size=FLAGS.lr_scale_batch_size, batch_size=FLAGS.batch_size,
      eval_batch_size=FLAGS.eval_batch_size, epochs=FLAGS.epochs,
      warmup_epochs=FLAGS.warmup_epochs, decay_epochs=decay_epochs,
      lr_decay_factor=FLAGS.lr_decay_factor, weight_decay=FLAGS.weight_decay or 0.0,
      preprocessing=FLAGS.preprocessing, eval_preprocessing=FLAGS.eval_preprocessing,
      preprocess_params=params, on_the_fly=FLAGS.on_the_fly, shuffle_buffer=FLAGS.shuffle_buffer,
      knn_k=FLAGS.knn_k, train_fraction=FLAGS.train_fraction,
      examples_per_class=FLAGS.examples_per_class, feature_cache_dir=FLAGS.feature_cache_dir,
      random_seed=FLAGS.random_seed, force=FLAGS.force)


def _check_workdir(config):
  """Creates the workdir, or checks that the run already in it has the same identity."""
  from core.config import ConfigError  # pylint: disable=g-import-not-at-top
  from core.files import write_json_atomic  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(config.workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for field in _IDENTITY_FIELDS:
      before = previous.get(field, defaults[field])
      if before != getattr(config, field):
        raise ConfigError(
            f"--workdir={config.workdir} holds a run with {field}={before!r}, not "
            f"{getattr(config, field)!r}; use another --workdir to start a new run")
  try:
    os.makedirs(config.workdir, exist_ok=True)
    write_json_atomic(path, config.to_dict())
  except OSError as e:
    raise ConfigError(f"--workdir={config.workdir} is not writable: {e}") from None


def run(config, print_fn=print):
  """One pretext experiment: train (resuming), optionally evaluate, export. Returns its results."""
  from core import config as config_lib  # pylint: disable=g-import-not-at-top
  from core import export as export_lib  # pylint: disable=g-import-not-at-top
  from core import files  # pylint: disable=g-import-not-at-top
  from core import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top

  config_lib.validate(config)
  try:
    strategy = trainer_lib.make_strategy(config.strategy)
  except ValueError as e:  # e.g. multi_worker without TF_CONFIG.
    raise config_lib.ConfigError(str(e)) from None
  config_lib.check_replicas(config, strategy.num_replicas_in_sync)
  _check_workdir(config)
  method = methods.get_method(config.task)
  trainer = trainer_lib.Trainer(config, method, strategy, print_fn=print_fn)
  state = trainer.train()
  results = {"step": state.step, "train_metrics": state.metrics}
  # Under multi_worker every worker evaluates and exports (both collective); only the chief keeps
  # what it writes.
  scratch = trainer.scratch_dir
  if config.run_eval:
    results["eval_metrics"] = trainer.evaluate()
    if not scratch:
      files.write_json_atomic(
          os.path.join(config.workdir, "pretext_results.json"),
          {"config": config.to_dict(), "step": state.step, "split": config.val_split,
           "metrics": results["eval_metrics"]})
  image_shape = config.serving_input_shape or method.serving_input_shape(state.image_shape)
  info = {
      "task": config.task, "architecture": config.architecture,
      "filters_factor": config.resolved_filters_factor(), "mode": config.mode,
      "last_relu": config.last_relu, "dataset": config.dataset, "step": state.step,
      "eval_preprocessing": export_lib.representation_preprocessing(config.preprocessing,
                                                                    method.PRETEXT_OPS),
      "preprocess_config": dataclasses.asdict(config.preprocess_config()),
  }
  export_dir = os.path.join(scratch, "export") if scratch else config.export_dir
  results["export_dir"] = export_lib.export(state.model, export_dir, image_shape, info)
  if scratch:
    shutil.rmtree(scratch, ignore_errors=True)
    results["export_dir"] = config.export_dir
  print_fn(f"exported to {results['export_dir']}")
  return results


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core.config import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.task == "linear_eval":
      from eval import linear_eval  # pylint: disable=g-import-not-at-top
      from eval import results as results_lib  # pylint: disable=g-import-not-at-top
      if not FLAGS.hub_module:
        raise ConfigError("--task=linear_eval needs --hub_module: an export directory "
                          f"(<pretext workdir>/export) or '{RANDOM_INIT}' for the baseline")
      results = linear_eval.run_linear_eval(linear_eval_config_from_flags())
      print(results_lib.format_table(results))
      print(f"results: {os.path.join(FLAGS.workdir, 'results.json')}")
    else:
      run(config_from_flags())
  except ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
