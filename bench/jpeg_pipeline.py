"""Input pipelines on ImageNet-sized JPEGs, one core: the suite's against a reference that
decodes only the crop (tf.io.decode_and_crop_jpeg), measured in the same run.

  .venv/bin/python bench/jpeg_pipeline.py                  # makes the ImageNet-shaped set
  .venv/bin/python bench/jpeg_pipeline.py --data_dir=/data/tfds --split=validation[:2000]

For each ImageNet preprocessing at 224 (`inception_preprocess` in training,
`resize_small,central_crop,-1_to_1` for evaluation), three pipelines read the same imagenet2012
records from TFDS and batch them by --batch_size:
  suite          datasets.get_data as every run calls it (JPEG sources decode the crop only)
  whole decode   the same ops after decoding each whole image (the path of non-JPEG sources,
                 and of JPEGs before decode-and-crop)
  reference      written here from the recipe of TensorFlow's own ImageNet input pipelines:
                 the JPEG's shape, a box (random: sample_distorted_bounding_box over 8%-100% of
                 the area, aspect 3/4-4/3; evaluation: the central 224/256 of the shorter
                 side), decode_and_crop_jpeg, a bilinear resize to 224, a random flip in
                 training, values in [-1, 1]
Images/s over --images images after --warmup images (tracing, the first reads), with tf.data
and TensorFlow's ops on one thread each; the ratios are to the reference of the same row.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

import datasets  # pylint: disable=g-import-not-at-top
from datasets import imagenet_like  # pylint: disable=g-import-not-at-top

SIZE = 224
EVAL_RESIZE = 256
ROWS = (("inception_preprocess", True), ("resize_small,central_crop,-1_to_1", False))


def one_core(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def reference(data_dir: str, split: str, is_training: bool, batch_size: int) -> tf.data.Dataset:
  """The reference pipeline (module docstring)."""

  def crop_box(jpeg):
    shape = tf.io.extract_jpeg_shape(jpeg)
    if is_training:
      begin, size, _ = tf.image.sample_distorted_bounding_box(
          shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
          min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
          max_attempts=10, use_image_if_no_bounding_boxes=True)
      return tf.stack([begin[0], begin[1], size[0], size[1]])
    side = tf.cast(SIZE / EVAL_RESIZE * tf.cast(tf.reduce_min(shape[:2]), tf.float32), tf.int32)
    return tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])

  def process(example):
    jpeg = example["image"]
    image = tf.io.decode_and_crop_jpeg(jpeg, crop_box(jpeg), channels=3)
    image = tf.image.resize(image, [SIZE, SIZE], method="bilinear") / 255.0
    if is_training:
      image = tf.image.random_flip_left_right(image)
    return {"image": image * 2.0 - 1.0, "label": example["label"]}

  ds = tfds.builder("imagenet2012", data_dir=data_dir).as_dataset(
      split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
  ds = ds.map(process, num_parallel_calls=1).batch(batch_size, drop_remainder=True)
  return ds.repeat()


def suite(data_dir: str, split: str, spec: str, is_training: bool, batch_size: int,
          whole: bool) -> tf.data.Dataset:
  config = datasets.PreprocessConfig(crop_size=SIZE, smaller_size=EVAL_RESIZE)
  fn = datasets.get_preprocess_fn(spec, is_training, config)
  if whole:
    fn = lambda example, fn=fn: fn(example)  # The same ops, without the JPEG path.
  return datasets.get_data("imagenet2012", split, is_training=is_training, preprocess_fn=fn,
                           batch_size=batch_size, data_dir=data_dir, shuffle_buffer=1,
                           repeat=True, drop_remainder=True, num_parallel_calls=1)


def images_per_second(ds: tf.data.Dataset, batch_size: int, images: int, warmup: int) -> float:
  batches = iter(one_core(ds))
  for _ in range(max(1, warmup // batch_size)):
    next(batches)
  steps = max(1, images // batch_size)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)["image"].numpy()
  return steps * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default="",
                      help="a TFDS data dir with imagenet2012 (default: the ImageNet-shaped set "
                      "made in a temporary directory, 16 classes x 32 images)")
  parser.add_argument("--split", default="train")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--warmup", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=2,
                      help="measurements of each pipeline, interleaved; the best is kept")
  args = parser.parse_args()
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir
    if not data_dir:
      data_dir = tmp
      imagenet_like.prepare(data_dir, classes=16, train_per_class=32, val_per_class=1)
    print(f"imagenet2012:{args.split} in {data_dir}, batches of {args.batch_size}, "
          f"{args.images} images per measurement, one core")
    print("| preprocessing | training | suite img/s | whole decode img/s | reference img/s "
          "| suite / reference | whole decode / reference |")
    print("|---|---|---|---|---|---|---|")
    for spec, is_training in ROWS:
      pipelines = {
          "suite": suite(data_dir, args.split, spec, is_training, args.batch_size, False),
          "whole": suite(data_dir, args.split, spec, is_training, args.batch_size, True),
          "reference": reference(data_dir, args.split, is_training, args.batch_size)}
      best = {name: 0.0 for name in pipelines}
      for _ in range(args.repeats):
        for name, ds in pipelines.items():
          best[name] = max(best[name], images_per_second(ds, args.batch_size, args.images,
                                                         args.warmup))
      ref = best["reference"]
      print(f"| `{spec}` | {is_training} | {best['suite']:.1f} | {best['whole']:.1f} | "
            f"{ref:.1f} | {best['suite'] / ref:.2f}x | {best['whole'] / ref:.2f}x |")


if __name__ == "__main__":
  main()
