"""Prepares the real-photo image folder (datasets/photos.py): 64x64 crops of the 16 photographs
that scikit-image ships, 300 training and 100 test crops of each, in about a minute, with
nothing downloaded. Then train and evaluate on it with --dataset=folder:<out>, or run
configs/grids/photos.toml.

  .venv/bin/python scripts/prepare_photos.py                       # into workdirs/photos
  .venv/bin/python scripts/prepare_photos.py --out=/data/photos --train_per_class=600

A folder that holds the same set already is kept; one that holds anything else is refused.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string("out", "workdirs/photos", "The folder to write (<out>/train, <out>/test).")
flags.DEFINE_integer("train_per_class", 300, "Training crops per photograph.")
flags.DEFINE_integer("test_per_class", 100, "Test crops per photograph.")
flags.DEFINE_integer("size", 64, "Side of the crops in pixels.")
flags.DEFINE_integer("seed", 0, "Seed of the crops' places and sizes.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from datasets import photos  # pylint: disable=g-import-not-at-top
  start = time.time()
  try:
    info = photos.prepare(FLAGS.out, FLAGS.train_per_class, FLAGS.test_per_class, FLAGS.size,
                          FLAGS.seed)
  except (ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  counts = info["counts"]
  print(f"{os.path.abspath(FLAGS.out)}: {len(counts['train'])} classes, "
        f"{sum(counts['train'].values())} training and {sum(counts['test'].values())} test "
        f"images ({time.time() - start:.0f} s); use --dataset=folder:{FLAGS.out}")
  return 0


if __name__ == "__main__":
  app.run(main)
