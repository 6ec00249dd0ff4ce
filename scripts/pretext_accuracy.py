"""The pretext accuracy of a trained run on any split: its last checkpoint evaluated as
--run_eval evaluates --val_split (deterministic preprocessing, every example's labels), on
--split of --dataset (by default the run's own). Writes nothing into the run.

  .venv/bin/python scripts/pretext_accuracy.py --workdir=workdirs/rotation_shapes --split=train
  .venv/bin/python scripts/pretext_accuracy.py --workdir=<a run on the photos> \
      --dataset=folder:workdirs/photos_seed1 --split=train
  .venv/bin/python scripts/pretext_accuracy.py --workdir=<a run on the photos> --by_class

Against the held-out split, it tells memorising from learning the task, and --by_class (each
class's images alone) on which classes it is learnt: docs/recorded_results.md, "Real photographs".
"""

import dataclasses
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()  # Before anything imports TensorFlow.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string("workdir", None, "The --workdir of a train_and_eval.py pretext run.")
flags.DEFINE_string("split", None, "The split to evaluate on (default: the run's --val_split).")
flags.DEFINE_string("dataset", None, "The dataset of that split (default: the run's).")
flags.DEFINE_string("data_dir", None, "Its data_dir (default: the run's, for its own dataset).")
flags.DEFINE_bool("by_class", False, "Also evaluate the images of each class of the split alone "
                  "(their dataset labels): on which classes the pretext task generalises.")
flags.DEFINE_bool("json", False, "Print the metrics as one JSON object.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from training import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  from training import validation  # pylint: disable=g-import-not-at-top
  try:
    changes = {}
    if FLAGS.dataset:
      changes.update(dataset=FLAGS.dataset, data_dir=FLAGS.data_dir)
    elif FLAGS.data_dir:
      changes.update(data_dir=FLAGS.data_dir)
    config = trainer_lib.load_run_config(FLAGS.workdir, **changes)
    split = FLAGS.split or config.val_split
    # The trainer reads the image shape from the training split: that of the evaluated one.
    config = dataclasses.replace(config, train_split=split, val_split=split)
    validation.validate(config)
    trainer = trainer_lib.Trainer(config, methods.get_method(config.task), print_fn=lambda _: None)
    step = trainer.restore()
    if not step:
      raise ConfigError(f"{FLAGS.workdir} holds no checkpoint to evaluate")
    metrics = trainer.evaluate(split)
    by_class = None
    if FLAGS.by_class:
      names = trainer.info.class_names
      by_class = {names[k]: m for k, m in trainer.evaluate_by_label(split).items()}
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if FLAGS.json:
    record = dict(task=config.task, dataset=config.dataset, split=split, step=step,
                  metrics=metrics)
    if by_class is not None:
      record["by_class"] = by_class
    print(json.dumps(record))
    return 0
  print(f"{config.task} at step {step} on {config.dataset}:{split}: {_line(metrics)}")
  for name, m in (by_class or {}).items():
    print(f"  {name}: {_line(m)}")
  return 0


def _line(metrics) -> str:
  return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                   for k, v in sorted(metrics.items()))


if __name__ == "__main__":
  app.run(main)
