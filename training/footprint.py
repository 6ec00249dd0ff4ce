"""What a step will hold in memory and write to disk, estimated before it runs (the plan of a grid:
benchmark.py --plan, grid/plan.py).

A model is measured by tracing, not by a table: it is built at width 1 and 2 (for a pretext run,
`method.build_model`, as training builds it), and its backbone's step on one image of the size
the data pipeline makes (forward in training mode and the gradient of every trainable variable)
is traced, not run. From those graphs:
  - the parameters at any width: each dimension of each variable is linear in filters_factor, so
    two widths give every variable's size at any width, heads included;
  - the bytes per image that training keeps between the forward and the backward pass: the
    tensors computed from the image that a gradient op reads (views resolved to the tensor they
    alias). All of them but the input image scale with the width;
  - the end points' shapes (for the evaluation's pooled features) and the largest tensor of the
    forward pass.

Training on one replica then holds (`training_bytes`): the float32 variables, their gradients and
the optimizer's slots (momentum: 1, Adam: 2), a 16-bit copy of the weights under mixed precision,
and per image the kept bytes plus the backward pass's working tensors (BACKWARD_HEADROOM of
them). bench/footprint.py measures the estimates against the peaks of real runs (and
tests/test_footprint.py holds them within 25%).
"""

import dataclasses
import math
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple

# Slots per variable of each optimizer (core/options.OPTIMIZERS): momentum, or Adam's two moments.
OPTIMIZER_SLOTS = {"sgd": 1, "lars": 1, "adam": 2}
# The backward pass's own tensors (gradients of activations, the ops' scratch) on top of what the
# forward pass kept, as a fraction of it: the peak per image of a CPU training step, measured for
# ResNet-50 v1/v2, RevNet-50 and VGG19 at 64 and 224 pixels in float32 and mixed_bfloat16, was
# 1.09 to 1.29 times the kept bytes.
BACKWARD_HEADROOM = 0.2
# A forward pass in inference (feature extraction) holds the end points it returns and, at any
# time, about this many of its largest tensors (a layer's input and output).
FORWARD_LIVE_TENSORS = 2
# Batches the input pipeline holds beside the step's (prefetching and parallel maps).
PIPELINE_BATCHES = 4
# A TensorFlow process's own memory before any tensor of the run: runtime, kernels, Python
# (measured on CPU, TF 2.21: 0.5-1.0 GB at the first step of a small model).
RUNTIME_BYTES = 1 << 30
# Views: ops whose output shares its input's buffer.
_VIEWS = ("Reshape", "Identity", "Squeeze", "ExpandDims", "StopGradient", "EnsureShape")


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A model measured at width 1 and 2 (see the module docstring); sizes in bytes."""
  variable_dims: Tuple[Tuple[Tuple[int, int], ...], ...]  # Per variable, per dim: (at 1, at 2).
  kept_bytes_per_image: int      # Kept for the backward pass, at width 1.
  input_bytes_per_image: int     # Of those, the input image's (the same at every width).
  largest_bytes_per_image: int   # The largest tensor of the forward pass, at width 1.
  end_point_shapes: Dict[str, Tuple[Tuple[int, int], ...]]  # Per dim: (at 1, at 2), no batch.
  compute_bytes: int             # Bytes of a value in the compute dtype (2 under mixed precision).

  def params(self, width: int) -> int:
    return sum(math.prod(_at(d, width) for d in dims) for dims in self.variable_dims)

  def kept_bytes(self, width: int) -> int:
    """Bytes per image kept for the backward pass at `width`."""
    return self.input_bytes_per_image + (
        self.kept_bytes_per_image - self.input_bytes_per_image) * width

  def end_points(self, width: int) -> Dict[str, Tuple[int, ...]]:
    """Each end point's shape per image at `width`."""
    return {name: tuple(_at(d, width) for d in dims)
            for name, dims in self.end_point_shapes.items()}


def _at(dim: Tuple[int, int], width: int) -> int:
  one, two = dim
  return one + (two - one) * (width - 1)


def training_bytes(backbone: Backbone, width: int, images_per_replica: float, optimizer: str,
                   precision: str) -> int:
  """Peak memory of one replica's training step (accelerator memory; host memory on a CPU):
  the variables, their gradients and slots, and per image what the backward pass needs."""
  params = backbone.params(width)
  variables = params * 4 * (2 + OPTIMIZER_SLOTS[optimizer])  # Weights, gradients, slots.
  if precision != "float32":
    variables += params * 2  # The weights cast to 16 bits for the forward pass.
  per_image = backbone.kept_bytes(width) * (1 + BACKWARD_HEADROOM)
  return int(variables + images_per_replica * per_image)


def inference_bytes(backbone: Backbone, width: int, images_per_replica: float) -> int:
  """Peak memory of one replica's forward pass in inference (feature extraction)."""
  ends = sum(math.prod(shape) for shape in backbone.end_points(width).values())
  live = FORWARD_LIVE_TENSORS * backbone.largest_bytes_per_image * width
  per_image = ends * backbone.compute_bytes + live
  return int(backbone.params(width) * 4 + images_per_replica * per_image)


def pipeline_bytes(examples_per_process: float, example_bytes: int) -> int:
  """A process's runtime and its input pipeline's batches (float32 examples)."""
  return int(RUNTIME_BYTES + PIPELINE_BATCHES * examples_per_process * example_bytes)


def checkpoint_bytes(params: int, optimizer: Optional[str]) -> int:
  """A checkpoint of `params` float32 variables and, where it trains with one, the optimizer's
  slots (an export's variables: `optimizer` None)."""
  slots = OPTIMIZER_SLOTS[optimizer] if optimizer else 0
  return params * 4 * (1 + slots)


KINDS = ("training", "fine-tuning", "extraction")


@dataclasses.dataclass(frozen=True)
class Step:
  """A step's estimate; sizes in bytes."""
  kind: str           # What its devices do: training, fine-tuning or extraction (KINDS).
  replicas: int       # Devices it trains or extracts on.
  params: int         # Of the model it trains or evaluates.
  device_bytes: int   # Per replica, at its peak (host memory where the replicas are CPUs).
  host_bytes: int     # Per process, beside what its devices hold.
  disk_bytes: int     # What it leaves on disk.
  scratch_bytes: int  # What it writes to disk and removes when it ends (feature caches).
  what: str           # What the devices hold, in words.

  def to_dict(self) -> Dict[str, Any]:
    return dataclasses.asdict(self)


def example_shape(config, split: str, is_training: bool, spec: str, preprocess_config
                  ) -> Tuple[int, ...]:
  """The shape of one example's image as the data pipeline yields it ([H,W,C] or [P,H,W,C]),
  from its element spec (nothing is read)."""
  import datasets  # pylint: disable=g-import-not-at-top
  fn = datasets.get_preprocess_fn(spec, is_training, preprocess_config)
  data = datasets.get_data(config.dataset, split, is_training=is_training, preprocess_fn=fn,
                           batch_size=1, data_dir=config.data_dir)
  return tuple(int(d) for d in data.element_spec["image"].shape[1:])


def describe_images(examples: float, shape: Sequence[int]) -> str:
  """'128 examples x 4 images of 224x224x3' (or '128 images of 224x224x3')."""
  per = "x".join(str(d) for d in shape[-3:])
  if len(shape) == 4:
    return f"{examples:g} examples x {shape[0]} images of {per}"
  return f"{examples:g} images of {per}"


def pretext(config, replicas: int, processes: int) -> Step:
  """The estimate of a pretext run of `config` on `replicas` devices in `processes` processes
  (its checks passed: train_and_eval.check_pretext)."""
  import datasets  # pylint: disable=g-import-not-at-top
  import methods  # pylint: disable=g-import-not-at-top
  from training import trainer  # pylint: disable=g-import-not-at-top
  method = methods.get_method(config.task)
  num_classes = datasets.get_dataset_info(config.dataset, config.data_dir).num_classes
  shape = example_shape(config, config.train_split, True, config.preprocessing,
                        datasets.PreprocessConfig.of(config))

  def build(width):
    return method.build_model(dataclasses.replace(config, filters_factor=width), shape,
                              num_classes)

  # What determines the model beside its width: every setting but those of where and how long.
  key = tuple(sorted((k, repr(v)) for k, v in config.to_dict().items()
                     if k not in _NOT_MODEL)) + (shape, num_classes)
  backbone = measure(key, build, shape, config.precision)
  width = config.resolved_filters_factor()
  examples = config.batch_size / replicas
  images = examples * (shape[0] if len(shape) == 4 else 1)
  example_bytes = 4 * math.prod(shape)
  local = ""
  if config.local_crops:  # Multi-crop's small views: counted as images in proportion to pixels.
    local_h, local_w = datasets.as_hw(config.local_crop_size, "local_crop_size")
    images += examples * config.local_crops * local_h * local_w / (shape[-3] * shape[-2])
    example_bytes += 4 * config.local_crops * local_h * local_w * shape[-1]
    local = f" and {config.local_crops} local views of {local_h}x{local_w} each"
  plan = trainer.make_plan(config)
  kept = len(trainer.kept_steps(plan, config.eval_every_epochs, config.eval_at_steps))
  params = backbone.params(width)
  weights = checkpoint_bytes(params, None)
  disk = (config.keep_checkpoint_max * checkpoint_bytes(params, config.optimizer)
          + weights * (1 + 2 * kept))  # The export; each kept step's weights and export.
  return Step(kind="training", replicas=replicas, params=params,
              device_bytes=training_bytes(backbone, width, images, config.optimizer,
                                          config.precision),
              host_bytes=pipeline_bytes(config.batch_size / processes, example_bytes),
              disk_bytes=int(disk), scratch_bytes=0,
              what=f"training {config.architecture} w{width} ({backbone.params(width) / 1e6:.0f}M "
                   f"parameters, {config.precision}) on {describe_images(examples, shape)}"
                   f"{local} per replica")


# Config fields that do not change the model a run builds.
_NOT_MODEL = ("filters_factor", "workdir", "data_dir", "export_dir", "checkpoint_dir", "epochs",
              "batch_size", "eval_batch_size", "lr", "warmup_epochs", "decay_epochs",
              "random_seed", "run_eval", "save_checkpoints_secs", "log_every_steps",
              "keep_checkpoint_max", "strategy", "deterministic", "jit_compile")


def measure(key: Hashable, build: Callable[[int], Any], image_shape: Sequence[int],
            precision: str, training: bool = True) -> Backbone:
  """The Backbone of `build(filters_factor)`, a model built for examples of `image_shape`
  ([H,W,C], or [P,H,W,C] stacked per example); measured once per `key` (what determines the model
  beside its width), image size and precision in a process. Without `training` it is measured
  for inference only (no kept bytes)."""
  per_image = tuple(int(d) for d in image_shape[-3:])
  cache_key = (key, per_image, precision, training)
  if cache_key not in _MEASURED:
    _MEASURED[cache_key] = _measure(build, per_image, precision, training)
  return _MEASURED[cache_key]


_MEASURED: Dict[Hashable, Backbone] = {}


def _measure(build, per_image: Tuple[int, ...], precision: str, training: bool) -> Backbone:
  from methods import base  # pylint: disable=g-import-not-at-top
  from training import trainer  # pylint: disable=g-import-not-at-top
  with trainer.dtype_policy(precision):
    one, two = build(1), build(2)
  shapes_one = [tuple(v.shape) for v in one.weights]
  shapes_two = [tuple(v.shape) for v in two.weights]
  if [len(s) for s in shapes_one] != [len(s) for s in shapes_two]:
    raise ValueError("the model's variables differ in number or rank between widths 1 and 2")
  variable_dims = tuple(tuple(zip(a, b)) for a, b in zip(shapes_one, shapes_two))
  kept, ends_one, largest = _trace(base.backbone_of(one), per_image, training)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ends_two = {k: tuple(v.shape[1:]) for k, v in base.backbone_of(two)(
      tf.zeros((1,) + per_image), training=False).items()}
  return Backbone(variable_dims, kept_bytes_per_image=sum(b for b, _ in kept.values()),
                  input_bytes_per_image=sum(b for b, is_input in kept.values() if is_input),
                  largest_bytes_per_image=largest,
                  end_point_shapes={k: tuple(zip(ends_one[k], ends_two[k])) for k in ends_one},
                  compute_bytes=2 if precision != "float32" else 4)


def _trace(backbone, per_image: Tuple[int, ...], gradients: bool):
  """Of the backbone's step on one image, traced (not run): (the forward tensors of the image
  that a gradient op reads, name -> (bytes, whether it is the input image itself), with
  `gradients`, else {}; the end points' shapes; the bytes of the largest forward tensor of the
  image). A tensor is the image's when it is computed from it (the weights' casts are not)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ends = {}

  def step(images):
    with tf.GradientTape() as tape:
      out = backbone(images, training=gradients)
      ends.update({k: tuple(v.shape[1:]) for k, v in out.items()})
      loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float32)) for v in out.values()])
    return tape.gradient(loss, backbone.trainable_variables) if gradients else loss

  graph = tf.function(step).get_concrete_function(
      tf.TensorSpec((1,) + per_image, tf.float32)).graph
  of_image, backward = set(), set()
  largest = 0
  for op in graph.get_operations():  # In the order they were made: inputs before their users.
    if op.name.startswith("gradient_tape") or any(t.op.name in backward for t in op.inputs):
      backward.add(op.name)
    elif op.type == "Placeholder" and op.outputs[0].dtype == tf.float32 or any(
        t.op.name in of_image for t in op.inputs):
      of_image.add(op.name)
      for t in op.outputs:
        if t.dtype.is_floating and t.shape.is_fully_defined() and op.type not in _VIEWS:
          largest = max(largest, t.shape.num_elements() * t.dtype.size)
  kept: Dict[str, Tuple[int, bool]] = {}
  for op in graph.get_operations():
    if op.name not in backward:
      continue
    for tensor in op.inputs:
      while tensor.op.type in _VIEWS and tensor.op.inputs:
        tensor = tensor.op.inputs[0]
      if (tensor.op.name in of_image and tensor.dtype.is_floating
          and tensor.shape.is_fully_defined()):
        kept[tensor.name] = (tensor.shape.num_elements() * tensor.dtype.size, _is_input(tensor))
  return kept, ends, largest


def _is_input(tensor) -> bool:
  """Whether `tensor` is the input image, cast or padded (not a layer's output)."""
  while tensor.op.type in _VIEWS + ("Cast", "Pad") and tensor.op.inputs:
    tensor = tensor.op.inputs[0]
  return tensor.op.type == "Placeholder"
