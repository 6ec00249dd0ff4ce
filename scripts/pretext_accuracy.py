"""The pretext accuracy of a trained run on any split: its last checkpoint evaluated as
--run_eval evaluates --val_split (deterministic preprocessing, every example's labels), on
--split of --dataset (by default the run's own). Writes nothing into the run.

  .venv/bin/python scripts/pretext_accuracy.py --workdir=workdirs/rotation_shapes --split=train
  .venv/bin/python scripts/pretext_accuracy.py --workdir=<a run on the photos> \
      --dataset=folder:workdirs/photos_seed1 --split=train
  .venv/bin/python scripts/pretext_accuracy.py --workdir=<a run on the photos> --by_class
  .venv/bin/python scripts/pretext_accuracy.py --workdir=<run>,<run> \
      --split=train,train@folder:workdirs/photos_seed1,test --json_out=<file>

Against the held-out split, it tells memorising from learning the task, and --by_class (each
class's images alone) on which classes it is learnt (docs/results.md, "Where the patch methods'
pretext accuracy on real photographs comes from"). --json_out keeps the tables as a bench output
for the results page (scripts/write_results.py --add).
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from report import results_page  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("workdir", None, "The --workdir of a train_and_eval.py pretext run, or several "
                  "(comma-separated).")
flags.DEFINE_list("split", [], "The splits to evaluate on (default: the run's --val_split), each "
                  "<split> or <split>@<dataset> (that split of another dataset, e.g. "
                  "train@folder:workdirs/photos_seed1).")
flags.DEFINE_string("dataset", None, "The dataset of the splits without @ (default: the run's).")
flags.DEFINE_string("data_dir", None, "Its data_dir (default: the run's, for its own dataset).")
flags.DEFINE_bool("by_class", False, "Also evaluate the images of each class of the split alone "
                  "(their dataset labels): on which classes the pretext task generalises.")
flags.DEFINE_bool("json", False, "Print the metrics of each evaluation as one JSON object.")
flags.DEFINE_string("json_out", "", results_page.JSON_OUT_HELP)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def _configs():
  """(workdir, config) of every evaluation asked for, all checked before any runs."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from training import validation  # pylint: disable=g-import-not-at-top
  out = []
  for workdir in FLAGS.workdir:
    for entry in FLAGS.split or [None]:
      split, _, dataset = (entry or "").partition("@")
      changes = {}
      if dataset or FLAGS.dataset:
        changes.update(dataset=dataset or FLAGS.dataset,
                       data_dir=None if dataset else FLAGS.data_dir)
      elif FLAGS.data_dir:
        changes.update(data_dir=FLAGS.data_dir)
      config = trainer_lib.load_run_config(workdir, **changes)
      split = split or config.val_split
      # The trainer reads the image shape from the training split: that of the evaluated one.
      config = dataclasses.replace(config, train_split=split, val_split=split)
      validation.validate(config)
      out.append((workdir, config))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  records = []
  try:
    for workdir, config in _configs():
      split = config.val_split
      trainer = trainer_lib.Trainer(config, methods.get_method(config.task),
                                    print_fn=lambda _: None)
      step = trainer.restore()
      if not step:
        raise ConfigError(f"{workdir} holds no checkpoint to evaluate")
      record = dict(workdir=workdir, task=config.task, dataset=config.dataset, split=split,
                    step=step, metrics=trainer.evaluate(split))
      if FLAGS.by_class:
        names = trainer.info.class_names
        record["by_class"] = {names[k]: m for k, m in trainer.evaluate_by_label(split).items()}
      records.append(record)
      if FLAGS.json:
        print(json.dumps({k: v for k, v in record.items() if k != "workdir"}), flush=True)
        continue
      print(f"{config.task} at step {step} on {config.dataset}:{split}: "
            f"{_line(record['metrics'])}", flush=True)
      for name, m in record.get("by_class", {}).items():
        print(f"  {name}: {_line(m)}")
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.json_out:
    from training import run_record  # pylint: disable=g-import-not-at-top
    results_page.write_bench_output(FLAGS.json_out, "scripts/pretext_accuracy.py",
                                    tables(records), run_record.record(random_seed=0))
    # With --json, stdout holds the JSON lines alone.
    print(f"wrote {FLAGS.json_out}", file=sys.stderr if FLAGS.json else sys.stdout)
  return 0


def _run_name(workdir: str) -> str:
  return os.path.basename(os.path.normpath(workdir))


def tables(records):
  """The evaluations as bench tables: one row each, and with --by_class one table per
  evaluation, a row per class (metrics other than counts in %)."""
  names = sorted({k for r in records for k, v in r["metrics"].items()
                  if isinstance(v, float) and k not in ("loss", "num_examples")})
  cell = lambda m, k: f"{100 * m[k]:.1f}" if k in m else ""
  count = lambda m: f"{m['num_examples']:.0f}" if "num_examples" in m else ""
  out = [results_page.bench_table(
      "Pretext metrics (%) of the last checkpoint, deterministic preprocessing",
      ["run", "evaluated on", "step", "examples"] + names + ["loss"],
      [[_run_name(r["workdir"]), f"{r['dataset']}:{r['split']}", r["step"],
        count(r["metrics"])] + [cell(r["metrics"], k) for k in names] +
       [f"{r['metrics']['loss']:.4f}" if "loss" in r["metrics"] else ""] for r in records])]
  for r in records:
    if "by_class" in r:
      out.append(results_page.bench_table(
          f"{_run_name(r['workdir'])} on {r['dataset']}:{r['split']}, each class's images alone "
          "(%)", ["class", "examples"] + names,
          [[c, count(m)] + [cell(m, k) for k in names]
           for c, m in sorted(r["by_class"].items(), key=lambda i: -i[1].get(names[0], 0)
                              if names else 0)]))
  return out


def _line(metrics) -> str:
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in sorted(metrics.items()))


if __name__ == "__main__":
  app.run(main)
