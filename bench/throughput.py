"""Throughput of training steps and input pipelines, against references measured in the same run.

  .venv/bin/python bench/throughput.py                       # everything, CPU-sized defaults
  .venv/bin/python bench/throughput.py --sections=backbones --image_size=224 --batch_size=128

Sections (each prints one table):
  matmul     dense float32 tf.matmul of --matmul_size square matrices: this machine's peak FLOP/s.
  backbones  one training step (forward, backward, SGD with momentum) of every backbone at
             --image_size, --batch_size and --filters_factor on random images, and of
             tf.keras.applications.ResNet50V2 at the same input and batch; the Keras model has
             the standard width, so our ResNet-50 v2 is also measured at filters_factor 4 and the
             ratio is taken between those two. The FLOP/s achieved by the ResNet-50 v2 steps
             (3x the profiled forward FLOPs per image) is given as a fraction of the matmul peak.
             --backbones selects some of them.
  vit        one training step of a ViT-Ti (models/vit.py, 3 heads, --vit_patch_size) at
             --image_size and --batch_size, against the same network built from Keras' own
             layers (keras.layers.MultiHeadAttention, LayerNormalization, Dense: no ViT ships
             with tf.keras, and keras-hub's needs tensorflow-text, which pulls a second
             TensorFlow); their parameter counts must agree; the ratio ours / Keras'.
  methods    every method's training step as configs/<method>/shapes.flags sets it up, on one
             fixed batch (source images/s: a rotation image is 4 backbone images, a jigsaw
             image 9 patches), next to its input pipeline alone on the embedded dataset (source
             images/s, preprocessing included): the pipeline must outrun the step.
  settings   (not in the default) the step of each of --settings_methods (as in methods) in fresh
             processes under each process setting of SETTINGS: TensorFlow's defaults, oneDNN
             off, one intra-op thread and two inter-op, and two processes at once with one
             thread of each (what benchmark.py --jobs=2 gives each cell on 2 cores).
  probes     (not in the default) the per-layer linear evaluation of configs/evaluation/
             shapes.flags at --probe_epochs, end to end (results.json's times: loading,
             features, heads, test): tuned over its grid of head settings, with one setting
             (the protocol before tuning), and --on_the_fly with that setting, on the first
             --probe_train_examples / --probe_test_examples images of the embedded dataset: the
             export --probe_export, or a random-init ResNet-50 v2 at each of --probe_widths on
             --image_size images, after an untimed run of one epoch that loads them; their
             wall times (tuned and one setting: the median of --probe_repeats runs in turn),
             the ratio tuned / one setting, and the best layer of each.
Timings skip --warmup_steps calls (tracing) and average the next --steps.

--profile=N traces --steps more calls of every measured step with the TensorFlow profiler and
prints its N op types with the most self time, the forward pass and the backward pass (the ops
under `gradient_tape/`) apart, and the N single ops with the most; --profile_dir keeps the trace
for TensorBoard's profile plugin.

oneDNN: TensorFlow turns its oneDNN CPU kernels on by default only on CPUs with AVX-512 VNNI or
newer; this script, like every entry point of the suite, turns them on unless
TF_ENABLE_ONEDNN_OPTS is set (core/runtime.py). Run it with TF_ENABLE_ONEDNN_OPTS=0 to compare.
"""

import argparse
import math
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from core import runtime  # pylint: disable=g-import-not-at-top
from report.results_page import (  # pylint: disable=g-import-not-at-top
    JSON_OUT_HELP, bench_table, bench_table_text, export_label, write_bench_output)

runtime.set_defaults()

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

BACKBONES = (("resnet50", "v1"), ("resnet50", "v2"), ("revnet50", "v2"), ("vgg19", "v2"))
METHODS = ("rotation", "supervised", "jigsaw", "relative_patch_location", "exemplar")
SECTIONS = ("matmul", "backbones", "vit", "methods", "settings", "probes")


def _timed(fn, steps: int, warmup: int) -> float:
  """Seconds per call of `fn` (which must block until its work is done)."""
  for _ in range(warmup):
    fn()
  start = time.perf_counter()
  for _ in range(steps):
    fn()
  return (time.perf_counter() - start) / steps


def _op_stats(logdir: str):
  """Rows of the profiler's framework op statistics (one per op) of the trace in `logdir`."""
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  # TensorBoard's profile plugin reads traces with it; TensorFlow has no public API for this.
  from tensorflow.python.profiler.internal import (  # pylint: disable=g-import-not-at-top
      _pywrap_profiler_plugin)
  paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
  data, ok = _pywrap_profiler_plugin.xspace_to_tools_data(paths, "framework_op_stats")
  if not ok:
    raise RuntimeError(f"the profiler could not read its trace in {logdir}")
  table = json.loads(data)
  table = table[0] if isinstance(table, list) else table
  keys = [c["id"] for c in table["cols"]]
  return [dict(zip(keys, [c.get("v") for c in row["c"]])) for row in table["rows"]]


def _pass_of(op_name: str) -> str:
  """"backward" for the ops of the gradient, "update" for the optimizer's, else "forward"."""
  if op_name.startswith("gradient_tape/") or "/gradient_tape/" in op_name:
    return "backward"
  if op_name.startswith(("SGD/", "Adam/", "sgd/", "adam/")) or "/SGD/" in op_name:
    return "update"
  return "forward"


def profile(name: str, fn, steps: int, top: int, logdir: str = "") -> None:
  """Traces `steps` calls of `fn` and prints where their time went (module docstring)."""
  import collections  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    logdir = logdir and os.path.join(logdir, name.replace(" ", "_").replace("/", "_"))
    tf.profiler.experimental.start(logdir or tmp)
    for _ in range(steps):
      fn()
    tf.profiler.experimental.stop()
    rows = _op_stats(logdir or tmp)
  busy = [r for r in rows if r["type"] != "IDLE"]
  total = sum(r["total_self_time"] for r in busy) or 1.0
  idle = sum(r["total_self_time"] for r in rows if r["type"] == "IDLE")
  by_pass = collections.defaultdict(collections.Counter)
  for r in busy:
    by_pass[_pass_of(r["operation"])][r["type"]] += r["total_self_time"]
  print(f"  profile of {name}: {total / steps / 1e3:.1f} ms of op time per call"
        f" (+{idle / steps / 1e3:.1f} ms idle threads)")
  for pass_name in ("forward", "backward", "update"):
    types = by_pass.get(pass_name)
    if not types:
      continue
    share = sum(types.values()) / total
    listed = ", ".join(f"{t} {v / total:.0%}" for t, v in types.most_common(top))
    print(f"    {pass_name} {share:.0%}: {listed}")
  print("    top ops: " + "; ".join(
      f"{r['operation']} ({r['type']}) {r['total_self_time'] / total:.1%}"
      for r in sorted(busy, key=lambda r: -r["total_self_time"])[:top]))


def measure(name: str, fn, args) -> float:
  """Seconds per call of `fn` (see `_timed`); with --profile, its profile too."""
  secs = _timed(fn, args.steps, args.warmup_steps)
  if args.profile:
    profile(name, fn, args.steps, args.profile, args.profile_dir)
  return secs


def matmul_peak(size: int, steps: int, warmup: int) -> float:
  a = tf.random.normal([size, size])
  b = tf.random.normal([size, size])
  matmul = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
  secs = _timed(lambda: matmul().numpy(), steps, warmup)
  return 2.0 * size ** 3 / secs


def _classifier_step(model, logits_of, batch_size: int, image_size: int):
  """A jit-free training step of `model` on fixed random images; returns a blocking callable."""
  images = tf.random.uniform([batch_size, image_size, image_size, 3], -1, 1)
  labels = tf.random.uniform([batch_size], 0, 1000, tf.int32)
  optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = logits_of(model(images, training=True))
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return lambda: step().numpy()


def forward_flops(model, logits_of, image_size: int) -> float:
  """Float operations of one image's forward pass, from TF's graph profiler."""
  from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
  from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top
  fn = tf.function(lambda x: logits_of(model(x, training=False)))
  graph = fn.get_concrete_function(tf.TensorSpec([1, image_size, image_size, 3])).graph
  options = option_builder.ProfileOptionBuilder(
      option_builder.ProfileOptionBuilder.float_operation()).with_empty_output().build()
  return float(model_analyzer.profile(graph, options=options).total_float_ops)


def flops_text(model, logits_of, size: int, batch: int, secs: float, peak: float) -> str:
  """The FLOP/s of a training step of `model` (3x its profiled forward FLOPs per image) and
  their share of the matmul `peak` ('' without a peak)."""
  if not peak:
    return ""
  achieved = 3 * forward_flops(model, logits_of, size) * batch / secs
  return f"{achieved / 1e9:.1f} GFLOP/s = {achieved / peak:.0%} of peak"


def backbones(args, peak: float):
  import models  # pylint: disable=g-import-not-at-top
  size, batch = args.image_size, args.batch_size
  rows = []
  ours = lambda out: out["logits"]
  widths = sorted({args.filters_factor, 4})
  for arch, mode in BACKBONES:
    if args.backbones and f"{arch}_{mode}" not in args.backbones.split(","):
      continue
    for width in widths:
      if width != args.filters_factor and (arch, mode) != ("resnet50", "v2"):
        continue
      model = models.get_model(arch, num_classes=1000, filters_factor=width, mode=mode)
      name = f"{arch}_{mode}" if arch == "resnet50" else arch
      secs = measure(f"{name} w{width}", _classifier_step(model, ours, batch, size), args)
      flops = ""
      if (arch, mode) == ("resnet50", "v2"):
        flops = flops_text(model, ours, size, batch, secs, peak)
      rows.append((f"{name} w{width}", batch / secs, flops))
  reference = keras.applications.ResNet50V2(weights=None, input_shape=(size, size, 3),
                                            classes=1000, classifier_activation=None)
  ref_secs = measure("keras ResNet50V2", _classifier_step(reference, lambda out: out, batch, size),
                     args)
  ref_rate = batch / ref_secs
  # Its FLOPs differ from ours: Keras puts each block's stride in its last unit, not its first.
  rows.append(("keras ResNet50V2 (= w4)", ref_rate,
               flops_text(reference, lambda out: out, size, batch, ref_secs, peak)))
  ours_w4 = dict((r[0], r[1]) for r in rows).get("resnet50_v2 w4")
  notes = [f"ResNet-50 v2 at standard width vs tf.keras.applications.ResNet50V2: "
           f"{ours_w4 / ref_rate:.2f}x"] if ours_w4 else []
  return bench_table(f"Training step, {size}x{size}, batch {batch} (images/s)",
                     ("model", "images/s", "vs keras", "FLOP/s"),
                     [(name, f"{rate:.1f}", f"{rate / ref_rate:.2f}x" if name == "resnet50_v2 w4"
                       else "", flops) for name, rate, flops in rows], notes)


def keras_vit(heads: int, patch: int, size: int, classes: int) -> keras.Model:
  """A pre-norm ViT of `heads` heads of 64 dimensions (12 blocks, MLP ratio 4, a class token,
  learned positions) from Keras' own layers: the reference of models/vit.py's."""
  width, tokens = 64 * heads, (size // patch) ** 2 + 1
  images = keras.Input((size, size, 3))
  x = keras.layers.Conv2D(width, patch, strides=patch)(images)
  x = keras.layers.Reshape((tokens - 1, width))(x)

  class Tokens(keras.layers.Layer):  # The class token and the position embeddings.
    def build(self, shape):
      self.cls = self.add_weight(shape=(1, 1, width), initializer="zeros")
      self.position = self.add_weight(shape=(1, tokens, width), initializer="zeros")

    def call(self, x):
      cls = keras.ops.tile(self.cls, [keras.ops.shape(x)[0], 1, 1])
      return keras.ops.concatenate([cls, x], axis=1) + self.position

  x = Tokens()(x)
  for _ in range(12):
    y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    x = x + keras.layers.MultiHeadAttention(heads, 64)(y, y)
    y = keras.layers.LayerNormalization(epsilon=1e-6)(x)
    y = keras.layers.Dense(4 * width, activation="gelu")(y)
    x = x + keras.layers.Dense(width)(y)
  x = keras.layers.LayerNormalization(epsilon=1e-6)(x)
  return keras.Model(images, keras.layers.Dense(classes)(x[:, 0]))


def vit_section(args):
  import models  # pylint: disable=g-import-not-at-top
  size, batch, patch = args.image_size, args.batch_size, args.vit_patch_size
  ours = models.get_model("vit", num_classes=1000, filters_factor=3, vit_patch_size=patch)
  reference = keras_vit(3, patch, size, 1000)
  ours(tf.zeros([1, size, size, 3]))
  counts = [sum(math.prod(v.shape) for v in m.trainable_weights) for m in (ours, reference)]
  if counts[0] != counts[1]:
    raise AssertionError(f"ViT-Ti parameters: ours {counts[0]}, Keras' {counts[1]}")
  rates = {}
  for name, model, logits_of in (("ours", ours, lambda out: out["logits"]),
                                 ("keras layers", reference, lambda out: out)):
    secs = measure(f"vit-ti {name}", _classifier_step(model, logits_of, batch, size), args)
    rates[name] = batch / secs
  return bench_table(f"ViT-Ti training step, {size}x{size}, patches {patch}x{patch} "
                     f"({(size // patch) ** 2 + 1} tokens), batch {batch}, {counts[0]} parameters "
                     "(images/s)", ("model", "images/s"),
                     [(name, f"{rate:.1f}") for name, rate in rates.items()],
                     [f"ViT-Ti, ours vs Keras' layers: "
                      f"{rates['ours'] / rates['keras layers']:.2f}x"])


def _method_config(method: str, overrides: dict):
  import train_and_eval  # pylint: disable=g-import-not-at-top
  flags = train_and_eval.FLAGS
  flags.unparse_flags()
  argv = ["bench", f"--flagfile=configs/{method}/shapes.flags",
          f"--workdir={tempfile.gettempdir()}/bench_throughput"]
  argv += [f"--{k}={v}" for k, v in overrides.items()]
  flags(argv)
  return train_and_eval.config_from_flags()


def methods_section(args):
  import datasets  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from training import schedules  # pylint: disable=g-import-not-at-top
  from methods import base  # pylint: disable=g-import-not-at-top
  rows = []
  for name in args.methods.split(","):
    config = _method_config(name, {})
    method = methods.get_method(name)
    preprocess = datasets.get_preprocess_fn(config.preprocessing, True,
                                            datasets.PreprocessConfig.of(config))
    data = datasets.get_data(config.dataset, config.train_split, is_training=True,
                             preprocess_fn=preprocess, batch_size=config.batch_size,
                             data_dir=config.data_dir)
    iterator = iter(data)
    pipe_secs = _timed(lambda: next(iterator)["image"].numpy(), args.steps, args.warmup_steps)
    batch = next(iterator)
    info = datasets.get_dataset_info(config.dataset, config.data_dir)
    model = method.build_model(config, tuple(batch["image"].shape[1:]), info.num_classes)
    optimizer = keras.optimizers.SGD(0.001, momentum=0.9)
    decay = config.resolved_weight_decay()

    @tf.function
    def step(batch=batch, model=model, optimizer=optimizer, config=config, method=method,
             decay=decay):
      with tf.GradientTape() as tape:
        spec = method.model_fn(model, batch, base.TRAIN, config)
        total = spec.loss + schedules.l2_decay(model.trainable_variables, decay)
      grads = tape.gradient(total, model.trainable_variables)
      optimizer.apply_gradients(zip(grads, model.trainable_variables))
      return total

    step_secs = measure(name, lambda: step().numpy(), args)
    b = config.batch_size
    rows.append((name, b, f"{b / step_secs:.1f}", f"{b / pipe_secs:.1f}",
                 f"{step_secs / pipe_secs:.1f}x"))
  return bench_table("Methods (configs/<method>/shapes.flags), source images/s",
                     ("method", "batch", "step", "pipeline", "pipeline/step"), rows)


# Section settings: the process settings compared, each (name, environment, processes at once).
# Two processes at once with one thread of each kind is what `benchmark.py --jobs=2` gives each
# cell on a 2-core machine (grid/local.py).
THREAD_VARIABLES = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")
SETTINGS = (
    ("TensorFlow's threads, oneDNN on (the suite's default)", {"TF_ENABLE_ONEDNN_OPTS": "1"}, 1),
    ("oneDNN off (TF_ENABLE_ONEDNN_OPTS=0): Eigen's kernels", {"TF_ENABLE_ONEDNN_OPTS": "0"}, 1),
    ("TF_NUM_INTRAOP_THREADS=1, TF_NUM_INTEROP_THREADS=2",
     {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}, 1),
    ("two processes at once, 1 + 1 threads each (benchmark.py --jobs=2)",
     {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}, 2),
)


def settings_section(args):
  """Each method of --settings_methods' training step (section methods) in fresh processes under
  each of `SETTINGS`: what TensorFlow's threads and kernels give on this machine."""
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  method_names = args.settings_methods.split(",")
  rows = []
  with tempfile.TemporaryDirectory(prefix="bench_settings_") as tmp:
    for i, (name, env, processes) in enumerate(SETTINGS):
      children = []
      for j in range(processes):
        out = os.path.join(tmp, f"{i}_{j}.json")
        command = [sys.executable, os.path.abspath(__file__), "--sections=methods",
                   f"--methods={args.settings_methods}", f"--steps={args.steps}",
                   f"--warmup_steps={args.warmup_steps}", f"--json_out={out}"]
        # TensorFlow's thread counts are the setting's alone, not inherited from this process.
        inherited = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
        children.append((out, subprocess.Popen(command, env=dict(inherited, **env),
                                               stdout=subprocess.DEVNULL)))
      rates = {m: 0.0 for m in method_names}
      for out, child in children:
        if child.wait() != 0:
          raise RuntimeError(f"section settings, {name}: the child exited {child.returncode}")
        with open(out) as f:
          for row in json.load(f)["tables"][0]["rows"]:
            rates[row[0]] += float(row[2])  # Step images/s, summed over the processes.
      rows.append([name, processes] + [f"{rates[m]:.1f}" for m in method_names])
  default = [float(r) for r in rows[0][2:]]
  for row in rows:
    row.append(", ".join(f"{float(r) / d:.2f}x" for r, d in zip(row[2:], default)))
  return bench_table("Process settings: training step, source images/s (summed over the "
                     "processes), each in fresh processes",
                     ["setting", "processes"] + method_names + ["vs the default"], rows,
                     [f"{args.steps} timed steps after {args.warmup_steps} untimed, per process; "
                      "processes started together overlap in time, not exactly."])


# One head per layer at the shapes flagfile's former setting: the protocol before the heads were
# tuned, and the on-the-fly protocol's.
ONE_SETTING = ["--probe_lrs=0.1", "--probe_weight_decays=0", "--noprobe_decorrelate"]


def _probe_run(export: str, width: int, args, on_the_fly: bool, extra=()):
  """results.json of one per-layer evaluation (section `probes`)."""
  import train_and_eval  # pylint: disable=g-import-not-at-top
  from eval import linear_eval  # pylint: disable=g-import-not-at-top
  flags = train_and_eval.FLAGS
  flags.unparse_flags()
  epochs = args.probe_epochs
  argv = ["bench", "--flagfile=configs/evaluation/shapes.flags",
          f"--train_split=train[:{args.probe_train_examples}]",
          f"--val_split=test[:{args.probe_test_examples}]", f"--epochs={epochs}"] + list(extra)
  if export:
    argv.append(f"--hub_module={export}")
  else:
    argv += ["--hub_module=random_init", "--architecture=resnet50", "--mode=v2",
             f"--filters_factor={width}", "--eval_preprocessing=resize,-1_to_1"]
  if on_the_fly:  # No augmentation: both protocols see the same features.
    argv += ["--on_the_fly", "--preprocessing=resize,-1_to_1"] + ONE_SETTING
  if on_the_fly or not export:  # An export's cached features keep its own sizes.
    argv.append(f"--resize_size={args.image_size}")
  with tempfile.TemporaryDirectory(prefix="bench_probes_") as workdir:
    argv.append(f"--workdir={workdir}")
    flags(argv)
    values, _ = train_and_eval.option_values(flags, argv[1:])
    return linear_eval.run_linear_eval(train_and_eval.evaluation_config(values))


def probes_section(args):
  targets = [(args.probe_export, None)] if args.probe_export else [
      ("", int(w)) for w in args.probe_widths.split(",")]
  rows = []
  for export, width in targets:
    # Not timed: the first run in the process loads the backbone, the dataset and TensorFlow's
    # kernels, which the runs after it find loaded.
    _probe_run(export, width, args, on_the_fly=False, extra=ONE_SETTING + ["--epochs=1"])
    # In turn, --probe_repeats times: the machine's speed drifts between runs minutes apart, and
    # the ratio of the medians is read against runs that drifted alike.
    tuned_runs, one_runs = [], []
    for _ in range(args.probe_repeats):
      tuned_runs.append(_probe_run(export, width, args, on_the_fly=False))
      one_runs.append(_probe_run(export, width, args, on_the_fly=False, extra=ONE_SETTING))
    tuned, one = _median_run(tuned_runs), _median_run(one_runs)
    fly = _probe_run(export, width, args, on_the_fly=True)
    name = export_label(export) if export else f"random init resnet50_v2 w{width}"
    split = lambda r: (f"{r['times']['total_s']:.1f} ({r['times']['feature_extraction_s']:.1f} + "
                       f"{r['times']['head_training_s']:.1f}, inputs "
                       f"{r['times'].get('input_stats_s', 0.0):.1f})")
    spread = lambda runs: ", ".join(f"{r['times']['total_s']:.1f}" for r in runs)
    best = lambda r: f"{r['best_layer']['name']} {100 * r['best_layer']['top1']:.1f}"
    rows.append((name, split(tuned), split(one),
                 f"{tuned['times']['total_s'] / one['times']['total_s']:.2f}x",
                 f"{spread(tuned_runs)} / {spread(one_runs)}",
                 f"{fly['times']['total_s']:.1f}", f"{best(tuned)} / {best(one)} / {best(fly)}"))
  return bench_table(f"Per-layer linear probes, {args.probe_epochs:g} epochs (cosine), "
                     f"{args.probe_train_examples} training / {args.probe_test_examples} test "
                     "images "
                     "(seconds: results.json's total_s, of the cached protocol features + heads, "
                     "and of the heads the time making their inputs: statistics, decorrelation, "
                     "transform)",
                     ("backbone", "tuned (grid)", "one setting", "ratio",
                      "each run: tuned / one setting", "on the fly",
                      "best layer: tuned / one setting / on the fly"), rows,
                     notes=[f"tuned and one setting: the run of median total_s of "
                            f"{args.probe_repeats}, run in turn"])


def _median_run(runs):
  """The run of median total_s (the upper of the two middle ones for an even count)."""
  return sorted(runs, key=lambda r: r["times"]["total_s"])[len(runs) // 2]


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sections", default="matmul,backbones,vit,methods")
  p.add_argument("--image_size", type=int, default=32)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--filters_factor", type=int, default=1)
  p.add_argument("--backbones", default="",
                 help="Only these, e.g. resnet50_v2 (names arch_mode; default: all of "
                      + ", ".join(f"{a}_{m}" for a, m in BACKBONES) + ").")
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--settings_methods", default="rotation",
                 help="Section settings: the methods whose step it measures.")
  p.add_argument("--vit_patch_size", type=int, default=4, help="Section vit: patch side.")
  p.add_argument("--matmul_size", type=int, default=2048)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--warmup_steps", type=int, default=2)
  p.add_argument("--probe_export", default="",
                 help="Section probes: this export (default: random-init backbones).")
  p.add_argument("--probe_widths", default="1,4",
                 help="Section probes: filters_factors of the random-init ResNet-50 v2.")
  p.add_argument("--probe_epochs", type=float, default=50)
  p.add_argument("--probe_train_examples", type=int, default=10000)
  p.add_argument("--probe_repeats", type=int, default=3,
                 help="Section probes: runs of the tuned and one-setting evaluations, in turn.")
  p.add_argument("--probe_test_examples", type=int, default=5000)
  p.add_argument("--profile", type=int, default=0, metavar="N",
                 help="Also profile every measured step: its N costliest op types and ops.")
  p.add_argument("--profile_dir", default="",
                 help="With --profile: keep the traces here (one folder per step).")
  p.add_argument("--json_out", default="", help=JSON_OUT_HELP)
  args = p.parse_args()
  sections = args.sections.split(",")
  unknown = set(sections) - set(SECTIONS)
  if unknown:
    p.error(f"unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
  for flag in ("methods", "settings_methods"):
    bad = [m for m in getattr(args, flag).split(",") if m not in METHODS]
    if bad:
      p.error(f"--{flag}: unknown method(s) {bad}; valid: {', '.join(METHODS)}")
  print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, devices: "
        f"{[d.name for d in tf.config.list_logical_devices()]}")
  results = []
  peak = 0.0
  if "matmul" in sections or "backbones" in sections:
    peak = matmul_peak(args.matmul_size, args.steps, args.warmup_steps)
    results.append(bench_table(f"Dense float32 matmul {args.matmul_size}^2", ("GFLOP/s",),
                               [(f"{peak / 1e9:.1f}",)]))
    print("\n" + bench_table_text(results[-1]))
  for name, section in (("backbones", lambda: backbones(args, peak)),
                        ("vit", lambda: vit_section(args)),
                        ("methods", lambda: methods_section(args)),
                        ("settings", lambda: settings_section(args)),
                        ("probes", lambda: probes_section(args))):
    if name in sections:
      results.append(section())
      print("\n" + bench_table_text(results[-1]))
  if args.json_out:
    from training import run_record  # pylint: disable=g-import-not-at-top
    write_bench_output(args.json_out, "bench/throughput.py", results,
                       run_record.record(random_seed=0))
    print(f"\nwrote {args.json_out}")


if __name__ == "__main__":
  main()
