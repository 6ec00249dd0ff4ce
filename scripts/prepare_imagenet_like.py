"""Prepares the ImageNet-shaped dataset (datasets/imagenet_like.py): `imagenet2012` in TFDS's
format in --data_dir, with JPEGs of ImageNet's sizes (300-500 pixel sides, about 90 kB) cut from
the photographs that scikit-image ships, nothing downloaded. Then every ImageNet flagfile runs
on it with --dataset=imagenet2012 --data_dir=<data_dir>.

  .venv/bin/python scripts/prepare_imagenet_like.py          # into workdirs/imagenet_like
  .venv/bin/python scripts/prepare_imagenet_like.py --data_dir=/tmp/inet --train_per_class=300

A --data_dir that holds the same set already is kept; one that holds another imagenet2012 (the
real one, say) is refused, never written to.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string("data_dir", "workdirs/imagenet_like", "The TFDS data directory to write.")
flags.DEFINE_integer("classes", 16, "Classes with images (one photograph each, at most 16) of "
                     "imagenet2012's 1000.")
flags.DEFINE_integer("train_per_class", 64, "Training images per class.")
flags.DEFINE_integer("val_per_class", 16, "Validation images per class (at most 50).")
flags.DEFINE_integer("seed", 0, "Seed of the crops, sizes and noise.")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  from core import runtime  # pylint: disable=g-import-not-at-top
  from datasets import imagenet_like  # pylint: disable=g-import-not-at-top
  runtime.quiet_logs()
  start = time.time()
  try:
    info = imagenet_like.prepare(FLAGS.data_dir, FLAGS.classes, FLAGS.train_per_class,
                                 FLAGS.val_per_class, FLAGS.seed)
  except (ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  counts = info["counts"]
  print(f"{os.path.abspath(FLAGS.data_dir)}: imagenet2012 with {len(counts['train'])} classes "
        f"of 1000 holding images, {sum(counts['train'].values())} training and "
        f"{sum(counts['validation'].values())} validation images ({time.time() - start:.0f} s); "
        f"use --dataset=imagenet2012 --data_dir={FLAGS.data_dir}")
  return 0


if __name__ == "__main__":
  app.run(main)
