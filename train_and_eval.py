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

<workdir>/pretext_results.json, the pretext run's own result:

  {"config": every field of the run's config, "step": the step evaluated (the last),
   "split": --val_split, "metrics": {"loss", the method's metrics (e.g. "accuracy"),
   "num_examples"}, "pretext_metric": the name in "metrics" of the method's own measure
   (accuracy unless the method names another, e.g. inpainting's PSNR), "times": {"training_s",
   "pretext_eval_s", "export_s", "series_exports_s" (with kept checkpoints), "total_s"},
   "run": the run record (training/run_record.py)}
"""

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
# Flags of this program alone, which act on how it runs, not on what a run computes.
_MODULE = sys.argv[0] if __name__ == "__main__" else __name__
flags.DEFINE_boolean("restart", False, "Pretext training: move the run already in --workdir "
                     "(everything in the folder) to <workdir>/replaced/<time>/ and train from step "
                     "0. Needed where it was trained with other settings.", module_name=_MODULE)
flags.DEFINE_boolean("check_only", False, "Run every check of this command (flags, data, "
                     "export, workdir) and write nothing: exit status 0 where it would start.",
                     module_name=_MODULE)
flags.DEFINE_string("check_steps", None, "A JSON file of commands (a list of {name, args, "
                    "export_pending, restart, replicas, processes, runtime, source_args}), each "
                    "checked as --check_only checks it and then estimated, in one process; "
                    "prints {\"errors\": [{name, error}], \"plans\": [...]} last "
                    "(benchmark.py's check and plan of a grid before it starts).",
                    module_name=_MODULE)
flags.DEFINE_boolean("verbose", False, "Also TensorFlow's and TFDS's INFO log lines.",
                     module_name=_MODULE)
PROGRAM_FLAGS = ("restart", "check_only", "check_steps", "verbose")


def config_from_flags():
  """The flags as one Config object (pretext training)."""
  from core.config import Config  # pylint: disable=g-import-not-at-top
  return Config(**options.config_kwargs(options.values_from_flags(FLAGS), options.PRETEXT))


def _flag_sources(argv):
  """(the flags that flagfiles set, the flags the command line sets last), name -> value as
  written, from the arguments (`--flagfile` expanded as absl does)."""
  in_files, given = {}, {}
  for arg in argv:
    if not arg.startswith("-"):
      continue
    name, eq, value = arg.lstrip("-").partition("=")
    if name == "flagfile":
      for sub in flags.FlagValues().read_flags_from_files([arg]):
        sub_name, sub_eq, sub_value = sub.lstrip("-").partition("=")
        in_files[sub_name] = sub_value if sub_eq else True
        given.pop(sub_name, None)
    else:
      given[options.ALIASES.get(name, name)] = value if eq else True
  return in_files, given


def option_values(flag_values, argv):
  """(every option's value, a note) from parsed flags and the arguments they came from: an
  --epochs set over a flagfile's scales the flagfile's warm-up and decays
  (options.scale_schedule; the note says so)."""
  values = options.values_from_flags(flag_values)
  scaled, note = options.scale_schedule(*_flag_sources(argv))
  values.update(scaled)
  return values, note


def _trained(workdir: str):
  """The outputs in `workdir` that hold a pretext run's training (core/files.TRAINED_OUTPUTS)."""
  from core import files  # pylint: disable=g-import-not-at-top
  found = []
  for name in files.TRAINED_OUTPUTS:
    path = os.path.join(workdir, name)
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
      found.append(name)
  return found


def _checkpoint_step(workdir: str):
  """The step of the workdir's latest checkpoint (the trainer numbers them by step), or None."""
  import re  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, "checkpoints", "checkpoint")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    match = re.search(r'^model_checkpoint_path: ".*ckpt-(\d+)"', f.read(), re.M)
  return int(match.group(1)) if match else None


def check_workdir(config, plan, restart: bool = False):
  """What to do with the run already in config.workdir, decided from its files alone; writes
  nothing. Returns (move, note): `move` the reason to move its contents to
  <workdir>/replaced/<time>/ before training from step 0 (None: keep them, resuming where the
  run is the same), `note` a line to print. A ConfigError, with each differing option, where
  the workdir holds training made with other settings that change results
  (options.result_differences; those of options.AFTER_TRAINING aside) and --restart is off.
  The one change it goes on under is a longer or shorter --epochs on the step schedule, from a
  checkpoint no later than the new end: the rates up to there are the same (not where a
  teacher's momentum rises over the whole training: it would have been another)."""
  from core import files  # pylint: disable=g-import-not-at-top
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  workdir = config.workdir
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory")
  has_config = os.path.exists(os.path.join(workdir, files.CONFIG_FILE))
  trained = _trained(workdir)
  if not has_config and not trained:
    return None, None
  if restart:
    return "--restart: the earlier run", None
  if not has_config:
    raise ConfigError(f"--workdir={workdir} holds {', '.join(trained)} but no "
                      f"{files.CONFIG_FILE}, so what trained them is unknown; use another "
                      "--workdir, or --restart to move them to "
                      f"{os.path.join(workdir, files.REPLACED_DIR)}/<time>/ and train from step 0")
  previous = trainer_lib.load_run_config(workdir)

  def resolved(c):
    return dict(c.to_dict(), filters_factor=c.resolved_filters_factor(),
                weight_decay=c.resolved_weight_decay())

  differences = options.result_differences(resolved(previous), resolved(config),
                                           options.PRETEXT, ignore=options.AFTER_TRAINING)
  if not differences:
    return None, None
  changed = options.format_differences(differences)
  if not trained:
    return (f"the earlier run in {workdir} ({changed}) trained nothing: its files", None)
  step = _checkpoint_step(workdir)
  import methods  # pylint: disable=g-import-not-at-top
  from methods import base as method_base  # pylint: disable=g-import-not-at-top
  teacher = getattr(methods.get_method(config.task), "TEACHER", None)
  spans_training = teacher is not None and method_base.teacher_schedule(
      config, teacher) != options.TEACHER_SCHEDULES[0]
  if [name for name, _, _ in differences] == ["epochs"] and config.lr_schedule == "step" and (
      not spans_training) and (step is None or step <= plan.total_steps):
    return None, (f"--epochs {previous.epochs:g} -> {config.epochs:g}: training goes on from "
                  f"step {step or 0} to {plan.total_steps} (the step schedule is the same up to "
                  "there)")
  at = f", up to step {step}" if step is not None else ""
  if spans_training and [name for name, _, _ in differences] == ["epochs"]:
    at += "; the teacher's momentum rises to 1 over --epochs"
  raise ConfigError(
      f"--workdir={workdir} holds a run trained with other settings ({changed}{at}); going on "
      "would label that training with the new ones. Use another --workdir, or add --restart to "
      f"move the earlier run to {os.path.join(workdir, files.REPLACED_DIR)}/<time>/ and train "
      "from step 0")


def check_pretext(config, restart: bool = False, input_sides: bool = True):
  """Every check of a pretext run before any work, writing nothing: its values, names, data
  and splits (training/validation.py), the strategy's environment, the plan's steps, the
  workdir. Returns (plan, check_workdir's (move, note)). `input_sides`: also the sides of the
  backbone's inputs (validation.check_input_side), which builds an input pipeline and so starts
  TensorFlow's runtime: `run` checks them once its strategy is made, as a multi-worker one must
  be made first."""
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from training import validation  # pylint: disable=g-import-not-at-top
  validation.validate(config)
  if input_sides:
    validation.check_input_side(config)
  try:
    trainer_lib.check_strategy(config.strategy)
    plan = trainer_lib.make_plan(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  trainer_lib.kept_steps(plan, config.eval_every_epochs, config.eval_at_steps)
  return plan, check_workdir(config, plan, restart)


def run(config, print_fn=print, restart: bool = False, stop=None):
  """One pretext experiment: train (resuming), optionally evaluate, export. Returns its results.

  Every check comes first (`check_pretext`, then the inputs' sides once the strategy is made);
  config.json is written once the trainer is built, so a run refused or failing before it
  leaves the workdir as it was (but for a --restart, which moves the earlier run aside). `stop`: the entry point's interrupts.StopOnSignal."""
  from core import config as config_lib  # pylint: disable=g-import-not-at-top
  from core import files  # pylint: disable=g-import-not-at-top
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from methods import base as method_base  # pylint: disable=g-import-not-at-top
  from training import export as export_lib  # pylint: disable=g-import-not-at-top
  from training import run_record  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from training import validation  # pylint: disable=g-import-not-at-top

  _, (move, note) = check_pretext(config, restart, input_sides=False)
  try:
    strategy = trainer_lib.make_strategy(config.strategy)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  validation.check_input_side(config)
  if stop is not None:
    stop.install()  # Over the SIGTERM handler of TensorFlow's multi-worker runtime.
  config_lib.check_replicas(config, strategy.num_replicas_in_sync)
  method = methods.get_method(config.task)
  if hasattr(method, "check_replicas"):
    method.check_replicas(config, strategy.num_replicas_in_sync)
  if note:
    print_fn(f"note: {note}")
  if move and trainer_lib.worker_id(strategy) is None:  # The chief moves, the others see it.
    print_fn(f"{move} moved to {files.move_aside(config.workdir)}")
  start = time.time()
  trainer = trainer_lib.Trainer(config, method, strategy, print_fn=print_fn)
  try:
    os.makedirs(config.workdir, exist_ok=True)
    files.write_json_atomic(os.path.join(config.workdir, files.CONFIG_FILE), config.to_dict())
  except OSError as e:
    raise ConfigError(f"--workdir={config.workdir} is not writable: {e}") from None
  state = trainer.train(stop)
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
  info = dict(export_lib.describe(config, state.image_shape), step=state.step,
              run=run_record.record(config.random_seed, strategy, config.deterministic))
  image_shape = info.pop("input_shape")  # export() records the shape it exports.
  export_dir = os.path.join(scratch, "export") if scratch else config.export_dir
  print_fn(f"exporting step {state.step} to {config.export_dir}")
  results["export_dir"] = export_lib.export(
      method_base.exported_model(state.model, config.export_teacher), export_dir, image_shape,
      info)
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
  pretext_results = os.path.join(config.workdir, files.PRETEXT_RESULTS_FILE)
  if config.run_eval and not scratch:
    times["total_s"] = time.time() - start
    files.write_json_atomic(
        pretext_results,
        {"config": config.to_dict(), "step": state.step, "split": config.val_split,
         "metrics": results["eval_metrics"],
         "pretext_metric": getattr(method, "PRETEXT_METRIC", "accuracy"), "times": times,
         "run": run_record.record(config.random_seed, strategy, config.deterministic)})
  elif not scratch and os.path.exists(pretext_results):
    # Of an earlier run of this workdir with --run_eval: not of this step, nor these settings.
    moved = files.move_aside(config.workdir, [files.PRETEXT_RESULTS_FILE])
    print_fn(f"{files.PRETEXT_RESULTS_FILE} of an earlier run moved to {moved}")
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
    export_lib.export(method_base.exported_model(trainer.model, config.export_teacher),
                      os.path.join(root, name), image_shape, point)
    exported.append(os.path.join(chief_root, name))
    shown = f", pretext accuracy {metrics['accuracy']:.4f}" if metrics and "accuracy" in metrics \
        else ""
    print_fn(f"exported the checkpoint of step {step} ({i + 1}/{len(kept)}){shown}")
  return exported


def evaluation_config(values):
  """The config of an evaluation task (options.EVALUATION_TASKS) of the option values."""
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from eval import fine_tune  # pylint: disable=g-import-not-at-top
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  task = values["task"]
  if not values["hub_module"]:
    raise ConfigError(f"--task={task} needs --hub_module: an export directory "
                      f"(<pretext workdir>/export) or '{options.RANDOM_INIT}' for the baseline")
  if options.EVALUATION_TASKS[task] == options.FINE_TUNE:
    return fine_tune.config_from_values(values)
  return linear_eval.config_from_values(values)


def check(values, restart: bool = False, export_pending: bool = False) -> None:
  """Every check of the command of `values` (option values) before any work; writes nothing.
  `export_pending`: an evaluation's export is written by a step before it (a grid cell), so it
  is not looked at."""
  from core.config import Config  # pylint: disable=g-import-not-at-top
  task = values["task"]
  if task not in options.EVALUATION_TASKS:
    check_pretext(Config(**options.config_kwargs(values, options.PRETEXT)), restart)
    return
  from eval import cka  # pylint: disable=g-import-not-at-top
  from eval import fine_tune  # pylint: disable=g-import-not-at-top
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  config = evaluation_config(values)
  validate = {"fine_tune": fine_tune.validate_config, "cka": cka.validate_config}.get(
      task, linear_eval.validate_config)
  validate(config, export_pending=export_pending)


def footprint(values, replicas: int = 1, processes: int = 1, source_values=None):
  """The estimate (training/footprint.Step) of the command of `values`, its checks passed, on
  `replicas` devices in `processes` processes; `source_values`: the option values of the pretext
  step that writes the export it evaluates (a grid cell's). None for a task without one (cka)."""
  from core.config import Config  # pylint: disable=g-import-not-at-top
  import datasets  # pylint: disable=g-import-not-at-top
  from eval import fine_tune  # pylint: disable=g-import-not-at-top
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  from training import export as export_lib  # pylint: disable=g-import-not-at-top
  from training import footprint as footprint_lib  # pylint: disable=g-import-not-at-top
  task = values["task"]
  if task not in options.EVALUATION_TASKS:
    config = Config(**options.config_kwargs(values, options.PRETEXT))
    return footprint_lib.pretext(config, replicas, processes)
  if task == "cka":
    return None
  config = evaluation_config(values)
  pending = None
  if source_values is not None:
    source = Config(**options.config_kwargs(source_values, options.PRETEXT))
    shape = footprint_lib.example_shape(source, source.train_split, True, source.preprocessing,
                                        datasets.PreprocessConfig.of(source))
    pending = export_lib.describe(source, shape)
  info = linear_eval.source_info(config, pending)
  if options.EVALUATION_TASKS[task] == options.FINE_TUNE:
    return fine_tune.footprint(config, info, replicas)
  return linear_eval.footprint(config, info)


def _entry_values(args):
  """The option values of a command's arguments; a ConfigError for bad flags."""
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  flag_values = flags.FlagValues()
  options.define_flags(flag_values)
  try:
    flag_values(["check"] + list(args))
  except flags.Error as e:
    raise ConfigError(str(e)) from None
  return option_values(flag_values, args)[0]


def check_steps(path: str) -> dict:
  """`check` of every command in the JSON file `path` (flag_check_steps), then the estimate of
  each that passed (`footprint`, with the entry's `replicas`, `processes`, `runtime` flags and
  `source_args`):
  {"errors": [{name, error}], "plans": [{name, **Step}]}."""
  import json  # pylint: disable=g-import-not-at-top
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    entries = json.load(f)
  errors, plans = [], []
  refused = set()  # The arguments of the steps refused: no estimate of what they would export.
  for entry in entries:
    try:
      values = _entry_values(entry["args"])
      check(values, restart=entry.get("restart", False),
            export_pending=entry.get("export_pending", False))
      source = entry.get("source_args")
      if source and tuple(source) in refused:
        continue
      # Estimated with the flags its executor adds (checked without: they need its cluster).
      step = footprint(dict(values, **entry.get("runtime", {})), entry.get("replicas", 1),
                       entry.get("processes", 1), _entry_values(source) if source else None)
    except ConfigError as e:
      errors.append({"name": entry["name"], "error": str(e)})
      refused.add(tuple(entry["args"]))
      continue
    if step is not None:
      plans.append(dict(name=entry["name"], **step.to_dict()))
  return {"errors": errors, "plans": plans}


def _interrupted_line(signum: int, detail: str = "") -> str:
  """The one line of a run stopped by a signal: what was kept and how to go on."""
  from core import interrupts  # pylint: disable=g-import-not-at-top
  line = f"interrupted by {interrupts.signal_name(signum)}"
  if detail:
    return f"{line} {detail}; the same command resumes from there"
  step = _checkpoint_step(FLAGS.workdir) if FLAGS.workdir else None
  if step is not None and FLAGS.task not in options.EVALUATION_TASKS:
    return f"{line}; the checkpoint of step {step} is kept: the same command resumes from it"
  return f"{line}; nothing half-written was left: the same command starts it again"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core import files  # pylint: disable=g-import-not-at-top
  from core import interrupts  # pylint: disable=g-import-not-at-top
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  runtime.quiet_logs(FLAGS.verbose)
  with interrupts.StopOnSignal(_interrupted_line) as stop:
    try:
      if FLAGS.check_steps:
        import json  # pylint: disable=g-import-not-at-top
        outcome = check_steps(FLAGS.check_steps)
        print(json.dumps(outcome))
        sys.exit(1 if outcome["errors"] else 0)
      values, note = option_values(FLAGS, sys.argv[1:])
      if note:
        print(f"note: {note}")
      if FLAGS.check_only:
        check(values, restart=FLAGS.restart)
        print(f"checked: --task={values['task']} would start")
        return
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      gpu_note = runtime.unseen_gpu_note(len(tf.config.list_physical_devices("GPU")))
      if gpu_note:
        print(f"note: {gpu_note}")
      task = values["task"]
      if task in options.EVALUATION_TASKS:
        from eval import fine_tune  # pylint: disable=g-import-not-at-top
        from eval import linear_eval  # pylint: disable=g-import-not-at-top
        from eval import results as results_lib  # pylint: disable=g-import-not-at-top
        config = evaluation_config(values)
        if task == "cka":
          from eval import cka  # pylint: disable=g-import-not-at-top
          cka.run_cka(config, print_fn=print)
        else:
          if task == "linear_eval":
            results = linear_eval.run_linear_eval(config)
          elif task == "probe_series":
            from eval import series  # pylint: disable=g-import-not-at-top
            results = series.run_probe_series(config, print_fn=print)
          else:
            results = fine_tune.run_fine_tune(config, print_fn=print, stop=stop)
          print(results_lib.format_table(results))
        print(f"results: {os.path.join(FLAGS.workdir, files.evaluation_file(task))}")
      else:
        from core.config import Config  # pylint: disable=g-import-not-at-top
        run(Config(**options.config_kwargs(values, options.PRETEXT)), restart=FLAGS.restart,
            stop=stop)
    except ConfigError as e:
      sys.exit(f"error: {e}")
    except interrupts.Interrupted as e:
      print(_interrupted_line(e.signum, e.detail), file=sys.stderr)
      sys.exit(interrupts.exit_code(e.signum))


if __name__ == "__main__":
  app.run(main)
