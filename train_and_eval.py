"""Trains a backbone on a pretext task and exports it, or evaluates an exported backbone.

  python train_and_eval.py --flagfile=configs/rotation/shapes.flags --workdir=workdirs/rot
  python train_and_eval.py --flagfile=configs/evaluation/shapes.flags \
      --hub_module=workdirs/rot/export --workdir=workdirs/rot/linear_eval

Training resumes from the latest checkpoint in --workdir. At the end the backbone is exported to
<workdir>/export (SavedModel with `serving_default` and `representation` signatures);
--run_eval also evaluates the pretext task on --val_split into <workdir>/pretext_results.json
(with the wall time of each phase and the run record of training/run_record.py).
--task=linear_eval trains one linear (or MLP) classifier per layer of the frozen backbone given
by --hub_module (an export, or `random_init` for a fresh --architecture) and writes
<workdir>/results.json; --task=fine_tune trains that backbone whole with a new linear head on a
labelled subset (--train_fraction, --examples_per_class) and writes the same file;
--task=probe_series probes every checkpoint that a pretext run with --eval_every_epochs kept
(<workdir>/step_<N>/results.json, <workdir>/series.json); --task=cka
writes <workdir>/cka.json, the linear CKA between every layer of --hub_module and of --cka_other
on the images of --val_split.
"""

import dataclasses
import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from core import options  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
# Every option (core/options.py) as a flag of this program.
options.define_flags(FLAGS, module_name=sys.argv[0] if __name__ == "__main__" else __name__)

# Settings that must match an earlier run in the same workdir for its checkpoints to be resumed
# (precision: the checkpoint of a mixed_float16 run holds a loss-scale optimizer). A config.json
# written before a field existed is read with the field's default.
_IDENTITY_FIELDS = ("task", "architecture", "filters_factor", "mode", "last_relu", "dataset",
                    "precision")


def config_from_flags():
  """The flags as one Config object (pretext training)."""
  from core.config import Config  # pylint: disable=g-import-not-at-top
  return Config(**options.config_kwargs(options.values_from_flags(FLAGS), options.PRETEXT))


def linear_eval_config_from_flags():
  """The flags as one LinearEvalConfig (--task=linear_eval)."""
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  return linear_eval.config_from_values(options.values_from_flags(FLAGS))


def fine_tune_config_from_flags():
  """The flags as one FineTuneConfig (--task=fine_tune)."""
  from eval import fine_tune  # pylint: disable=g-import-not-at-top
  return fine_tune.config_from_values(options.values_from_flags(FLAGS))


def _check_workdir(config):
  """Creates the workdir, or checks that the run already in it has the same identity."""
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from core.files import CONFIG_FILE, write_json_atomic  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(config.workdir, CONFIG_FILE)
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
  from core import files  # pylint: disable=g-import-not-at-top
  from core import specs  # pylint: disable=g-import-not-at-top
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  import datasets  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from methods import base as method_base  # pylint: disable=g-import-not-at-top
  from training import export as export_lib  # pylint: disable=g-import-not-at-top
  from training import run_record  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from training import validation  # pylint: disable=g-import-not-at-top

  validation.validate(config)
  try:
    strategy = trainer_lib.make_strategy(config.strategy)
  except ValueError as e:  # e.g. multi_worker without TF_CONFIG.
    raise ConfigError(str(e)) from None
  config_lib.check_replicas(config, strategy.num_replicas_in_sync)
  _check_workdir(config)
  method = methods.get_method(config.task)
  start = time.time()
  trainer = trainer_lib.Trainer(config, method, strategy, print_fn=print_fn)
  state = trainer.train()
  times = {"training_s": time.time() - start}
  results = {"step": state.step, "train_metrics": state.metrics}
  # Under multi_worker every worker evaluates and exports (both collective); only the chief keeps
  # what it writes.
  scratch = trainer.scratch_dir
  if config.run_eval:
    t = time.time()
    results["eval_metrics"] = trainer.evaluate()
    times["pretext_eval_s"] = time.time() - t
  t = time.time()
  image_shape = config.serving_input_shape or method.serving_input_shape(state.image_shape)
  info = {
      "task": config.task, "architecture": config.architecture,
      "filters_factor": config.resolved_filters_factor(), "mode": config.mode,
      "last_relu": config.last_relu, "dataset": config.dataset, "step": state.step,
      "eval_preprocessing": specs.representation_spec(config.preprocessing),
      "preprocess_config": dataclasses.asdict(datasets.PreprocessConfig.of(config)),
      "run": run_record.record(config.random_seed, strategy, config.deterministic),
  }
  export_dir = os.path.join(scratch, "export") if scratch else config.export_dir
  results["export_dir"] = export_lib.export(state.model, export_dir, image_shape, info,
                                            backbone=method_base.backbone_of(state.model))
  times["export_s"] = time.time() - t
  if trainer.kept_steps:
    t = time.time()
    results["series_exports"] = _export_kept(trainer, info, image_shape, print_fn,
                                             final=(state.step, results.get("eval_metrics")))
    times["series_exports_s"] = time.time() - t
  if scratch:
    shutil.rmtree(scratch, ignore_errors=True)
    results["export_dir"] = config.export_dir
  print_fn(f"exported to {results['export_dir']}")
  if config.run_eval and not scratch:
    times["total_s"] = time.time() - start
    files.write_json_atomic(
        os.path.join(config.workdir, files.PRETEXT_RESULTS_FILE),
        {"config": config.to_dict(), "step": state.step, "split": config.val_split,
         "metrics": results["eval_metrics"], "times": times,
         "run": run_record.record(config.random_seed, strategy, config.deterministic)})
  return results


def _export_kept(trainer, info, image_shape, print_fn, final=(None, None)):
  """Exports every kept checkpoint (probes over training) to <workdir>/exports/step_<N>, with
  its step, epoch and, under --run_eval, its pretext metrics (`final`: the last step and the
  metrics already evaluated there); those exported earlier are kept. Leaves the trainer's model
  at the last one. Returns the export directories, by step."""
  from core import files  # pylint: disable=g-import-not-at-top
  from methods import base as method_base  # pylint: disable=g-import-not-at-top
  from training import export as export_lib  # pylint: disable=g-import-not-at-top
  config = trainer.config
  chief_root = os.path.join(config.workdir, files.SERIES_EXPORTS_DIR)
  root = os.path.join(trainer.scratch_dir or config.workdir, files.SERIES_EXPORTS_DIR)
  exported = []
  kept = trainer.kept_checkpoints()
  for i, (step, checkpoint) in enumerate(kept):
    name = files.step_dir_name(step)
    # Decided from the chief's files on every worker: exporting is collective.
    if files.read_export_info(os.path.join(chief_root, name), missing_ok=True).get("step") == step:
      exported.append(os.path.join(chief_root, name))
      continue
    trainer.restore_kept(checkpoint)
    metrics = None
    if config.run_eval:
      metrics = final[1] if step == final[0] and final[1] else trainer.evaluate()
    point = dict(info, step=step, epoch=step / trainer.plan.steps_per_epoch,
                 pretext_metrics=metrics, pretext_split=config.val_split if metrics else None)
    export_lib.export(trainer.model, os.path.join(root, name), image_shape, point,
                      backbone=method_base.backbone_of(trainer.model))
    exported.append(os.path.join(chief_root, name))
    shown = f", pretext accuracy {metrics['accuracy']:.4f}" if metrics and "accuracy" in metrics \
        else ""
    print_fn(f"exported the checkpoint of step {step} ({i + 1}/{len(kept)}){shown}")
  return exported


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core import files  # pylint: disable=g-import-not-at-top
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    if FLAGS.task in options.EVALUATION_TASKS:
      from eval import fine_tune  # pylint: disable=g-import-not-at-top
      from eval import linear_eval  # pylint: disable=g-import-not-at-top
      from eval import results as results_lib  # pylint: disable=g-import-not-at-top
      if not FLAGS.hub_module:
        raise ConfigError(f"--task={FLAGS.task} needs --hub_module: an export directory "
                          f"(<pretext workdir>/export) or '{options.RANDOM_INIT}' for the "
                          "baseline")
      if FLAGS.task == "cka":
        from eval import cka  # pylint: disable=g-import-not-at-top
        cka.run_cka(linear_eval_config_from_flags(), print_fn=print)
      else:
        if FLAGS.task == "linear_eval":
          results = linear_eval.run_linear_eval(linear_eval_config_from_flags())
        elif FLAGS.task == "probe_series":
          from eval import series  # pylint: disable=g-import-not-at-top
          results = series.run_probe_series(linear_eval_config_from_flags(), print_fn=print)
        else:
          results = fine_tune.run_fine_tune(fine_tune_config_from_flags(), print_fn=print)
        print(results_lib.format_table(results))
      print(f"results: {os.path.join(FLAGS.workdir, files.evaluation_file(FLAGS.task))}")
    else:
      run(config_from_flags())
  except ConfigError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
