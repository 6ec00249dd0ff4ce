"""What only an accelerator can tell, in one run and one table: run it whenever a GPU machine is
at hand (sized for a few minutes on one GPU, not yet timed on one; tests and CI never need it).

  .venv/bin/python bench/device_check.py            # after `make venv GPU=1`
  .venv/bin/python bench/device_check.py --quick    # a CPU rehearsal of every row, tiny sizes

Rows (each measured in this run, ratios against a row of the same run):
  train      one training step (forward, backward, SGD with momentum) of every backbone at
             --image_size (224) and --batch_size per device, at standard width: float32,
             mixed precision (mixed_bfloat16 where the device has bfloat16, else mixed_float16
             with loss scaling) and float32 with XLA (jit_compile); next to
             tf.keras.applications.ResNet50V2 in the same three settings. images/s, and the ratio
             of our ResNet-50 v2 to Keras's.
  determinism  the same ResNet-50 v2 steps twice with TensorFlow's op determinism (what
             --deterministic turns on): whether the losses are equal, and its speed against the
             default kernels.
  mirrored   with two or more GPUs: the ResNet-50 v2 step under MirroredStrategy on two of them
             at twice the global batch, against one.
  imagenet   the ImageNet flagfiles of rotation (whole images) and jigsaw (patches) for a few
             steps on the ImageNet-shaped set made here, each exported and probed with its
             ImageNet evaluation flagfile on a few hundred images: wall seconds of each step.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

BACKBONES = (("resnet50", "v1"), ("resnet50", "v2"), ("revnet50", "v2"), ("vgg19", "v2"))


def _step(model_fn, batch_size: int, image_size: int, precision: str, jit: bool,
          strategy=None):
  """A blocking callable running one classifier training step on fixed images (`batch_size`
  global; under `strategy` each replica its share), returning the loss."""
  strategy = strategy or tf.distribute.get_strategy()
  with strategy.scope():
    keras.config.set_dtype_policy(precision)
    try:
      model, logits_of = model_fn()
    finally:
      keras.config.set_dtype_policy("float32")
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if precision == "mixed_float16":
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  replicas = strategy.num_replicas_in_sync
  share = batch_size // replicas
  images = strategy.experimental_distribute_values_from_function(
      lambda context: tf.random.stateless_uniform(
          [share, image_size, image_size, 3], [1, context.replica_id_in_sync_group], -1, 1))
  labels = strategy.experimental_distribute_values_from_function(
      lambda context: tf.random.stateless_uniform(
          [share], [3, context.replica_id_in_sync_group], 0, 1000, tf.int32))

  @tf.function(jit_compile=jit)
  def step_fn(images, labels):
    with tf.GradientTape() as tape:
      logits = tf.cast(logits_of(model(images, training=True)), tf.float32)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      scaled = loss / replicas
      if precision == "mixed_float16":
        scaled = optimizer.scale_loss(scaled)
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss / replicas

  @tf.function
  def step():
    return strategy.reduce("SUM", strategy.run(step_fn, args=(images, labels)), axis=None)

  return lambda: float(step().numpy())


def _rate(step, batch_size: int, steps: int, warmup: int) -> float:
  for _ in range(warmup):
    step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  rate = batch_size * steps / (time.perf_counter() - start)
  keras.backend.clear_session()  # The model and its traced step go with `step`.
  return rate


def _ours(arch, mode):
  import models  # pylint: disable=g-import-not-at-top
  return lambda: (models.get_model(arch, num_classes=1000, mode=mode), lambda out: out["logits"])


def _keras(image_size):
  return lambda: (keras.applications.ResNet50V2(weights=None, input_shape=(image_size,
                                                                          image_size, 3),
                                                classes=1000, classifier_activation=None),
                  lambda out: out)


def mixed_precision() -> str:
  """mixed_bfloat16 on GPUs that have bfloat16 (compute capability 8.0 and newer), else
  mixed_float16; mixed_bfloat16 on CPUs."""
  gpus = tf.config.list_physical_devices("GPU")
  if not gpus:
    return "mixed_bfloat16"
  capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
  return "mixed_bfloat16" if capability and capability >= (8, 0) else "mixed_float16"


def train_rows(args, rows):
  settings = (("float32", False), (mixed_precision(), False), ("float32", True))
  ours_v2, theirs = {}, {}
  for precision, jit in settings:
    label = precision + (" + XLA" if jit else "")
    for arch, mode in BACKBONES:
      rate = _rate(_step(_ours(arch, mode), args.batch_size, args.image_size, precision, jit),
                   args.batch_size, args.steps, args.warmup)
      name = f"{arch} {mode}" if arch == "resnet50" else arch
      rows.append(("train", f"{name}, {label}", f"{rate:.1f} img/s", ""))
      if (arch, mode) == ("resnet50", "v2"):
        ours_v2[label] = rate
    rate = _rate(_step(_keras(args.image_size), args.batch_size, args.image_size, precision,
                       jit), args.batch_size, args.steps, args.warmup)
    theirs[label] = rate
    rows.append(("train", f"keras ResNet50V2, {label}", f"{rate:.1f} img/s",
                 f"ours v2 {ours_v2[label] / rate:.2f}x"))
  base = ours_v2["float32"]
  for label, rate in ours_v2.items():
    if label != "float32":
      rows.append(("train", f"resnet50 v2, {label} against float32", f"{rate / base:.2f}x", ""))


def determinism_row(args, rows):
  def losses():
    keras.utils.set_random_seed(0)
    step = _step(_ours("resnet50", "v2"), args.batch_size, args.image_size, "float32", False)
    values = [step() for _ in range(3)]
    return values, step

  _, step = losses()
  free_rate = _rate(step, args.batch_size, args.steps, 0)
  tf.config.experimental.enable_op_determinism()
  try:
    first, step = losses()
    second, _ = losses()
    rate = _rate(step, args.batch_size, args.steps, 0)
    rows.append(("determinism", "resnet50 v2, op determinism: losses of two runs",
                 "equal" if first == second else f"differ ({first} / {second})",
                 f"speed {rate / free_rate:.2f}x of the default kernels"))
  except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as e:
    rows.append(("determinism", "resnet50 v2, op determinism", "an op has no deterministic "
                 "kernel", str(e).splitlines()[0][:120]))


def mirrored_row(args, rows):
  gpus = tf.config.list_logical_devices("GPU")
  if len(gpus) < 2:
    rows.append(("mirrored", "two replicas", f"not measured ({len(gpus)} GPU)", ""))
    return
  one = _rate(_step(_ours("resnet50", "v2"), args.batch_size, args.image_size, "float32", False),
              args.batch_size, args.steps, args.warmup)
  strategy = tf.distribute.MirroredStrategy([d.name for d in gpus[:2]])
  step = _step(_ours("resnet50", "v2"), 2 * args.batch_size, args.image_size, "float32", False,
               strategy)
  rate = _rate(step, 2 * args.batch_size, args.steps, args.warmup)
  rows.append(("mirrored", "resnet50 v2 on 2 GPUs, twice the batch", f"{rate:.1f} img/s",
               f"{rate / one:.2f}x of one GPU"))


def _run(argv, log):
  start = time.time()
  proc = subprocess.run([sys.executable] + argv, cwd=REPO_ROOT, capture_output=True, text=True)
  with open(log, "a") as f:
    f.write(" ".join(argv) + "\n" + proc.stdout + proc.stderr)
  if proc.returncode:
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-5:])
    raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{tail}")
  return time.time() - start


def imagenet_rows(args, rows, tmp):
  data_dir = os.path.join(tmp, "imagenet_like")
  _run(["scripts/prepare_imagenet_like.py", f"--data_dir={data_dir}",
        f"--train_per_class={args.imagenet_per_class}", "--val_per_class=16"],
       os.path.join(tmp, "log.txt"))
  probed = min(256, 16 * args.imagenet_per_class)  # Training images of the probes.
  shrink = [f"--data_dir={data_dir}", "--epochs=0.05", "--val_split=validation[:64]"]
  if args.quick:
    shrink += ["--batch_size=8", "--filters_factor=1", "--eval_batch_size=8"]
  for method, evaluation in (("rotation", "imagenet"), ("jigsaw", "imagenet_patches")):
    workdir = os.path.join(tmp, method)
    pretext = _run(["train_and_eval.py", f"--flagfile=configs/{method}/imagenet.flags",
                    f"--workdir={workdir}", f"--precision={mixed_precision()}"] + shrink,
                   os.path.join(tmp, "log.txt"))
    probe = _run(["train_and_eval.py", f"--flagfile=configs/evaluation/{evaluation}.flags",
                  f"--hub_module={workdir}", f"--workdir={workdir}/linear_eval",
                  f"--data_dir={data_dir}", f"--train_split=train[:{probed}]",
                  "--val_split=validation[:128]", "--epochs=1", "--batch_size=64"],
                 os.path.join(tmp, "log.txt"))
    with open(os.path.join(workdir, "linear_eval", "results.json")) as f:
      best = json.load(f)["best_layer"]
    rows.append(("imagenet", f"{method}: configs/{method}/imagenet.flags, 0.05 epoch; "
                 f"{evaluation}.flags on {probed} images", f"{pretext:.0f} s + {probe:.0f} s",
                 f"best layer {best['name']} ({best['top1']:.1%}; a check of the code path)"))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image_size", type=int, default=224)
  parser.add_argument("--batch_size", type=int, default=64, help="per device")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--imagenet_per_class", type=int, default=64)
  parser.add_argument("--quick", action="store_true",
                      help="tiny sizes, for a rehearsal on a CPU")
  args = parser.parse_args()
  if args.quick:
    args.image_size, args.batch_size, args.steps, args.warmup = 32, 4, 2, 1
    args.imagenet_per_class = 8
  gpus = tf.config.list_physical_devices("GPU")
  names = [tf.config.experimental.get_device_details(g).get("device_name", g.name)
           for g in gpus]
  print(f"TensorFlow {tf.__version__}; GPUs: {', '.join(names) or 'none'}; "
        f"{os.cpu_count()} CPUs; mixed precision here: {mixed_precision()}")
  note = runtime.unseen_gpu_note(len(gpus))
  if note:
    print(f"note: {note}")
  rows = []
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for part in (train_rows, determinism_row, mirrored_row):
      part(args, rows)
    imagenet_rows(args, rows, tmp)
  print(f"\n{args.image_size}x{args.image_size}, batch {args.batch_size} per device, "
        f"{args.steps} steps after {args.warmup}; {time.time() - start:.0f} s in all\n")
  print("| check | what | measured | against |")
  print("|---|---|---|---|")
  for row in rows:
    print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
  main()
