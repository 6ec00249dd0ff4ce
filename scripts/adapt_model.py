"""Puts a backbone made elsewhere on the suite's per-layer table: writes an export of the suite's
form from a Keras model file (.keras) or a SavedModel and an adapter that names its end points
(eval/adapter.py says what an adapter holds; configs/adapters/ has examples). Every evaluation
then takes the export as --hub_module.

  .venv/bin/python scripts/adapt_model.py --model=resnet50.keras \\
      --adapter=configs/adapters/keras_resnet50.toml --out=workdirs/keras_resnet50
  .venv/bin/python train_and_eval.py --flagfile=configs/evaluation/imagenet.flags \\
      --hub_module=workdirs/keras_resnet50 --workdir=workdirs/keras_resnet50_probes
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string("model", None, "The outside model: a .keras file or a SavedModel directory.")
flags.DEFINE_string("adapter", None, "The adapter (TOML) naming its end points.")
flags.DEFINE_string("out", None, "The export directory to write (an earlier adapted export "
                    "there is replaced; any other directory is refused).")
for _name in ("model", "adapter", "out"):
  flags.mark_flag_as_required(_name)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from eval import adapter  # pylint: disable=g-import-not-at-top
  try:
    info = adapter.adapt(FLAGS.model, FLAGS.adapter, FLAGS.out)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  ends = [e for e in info["end_points"] if e != "logits"]
  print(f"{os.path.abspath(FLAGS.out)}: {info['architecture']} taking "
        f"{'x'.join(map(str, info['input_shape']))} images, end points {', '.join(ends)}; "
        f"probe it with --hub_module={FLAGS.out}")
  return 0


if __name__ == "__main__":
  app.run(main)
