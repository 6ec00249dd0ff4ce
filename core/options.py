"""Every option of train_and_eval.py, defined once: its name, kind, default, choices, help, the
configs that take it, whether it changes results, and the check of its value.

From this table come the absl flags (`define_flags`, train_and_eval.py), the config dataclasses
(`make_config`: core/config.py's Config, eval/linear_eval.py's LinearEvalConfig), their checks
(`check_values`), and what the grid runner knows of the flags (grid/flags.py). Free of
TensorFlow.
"""

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import specs
from core.errors import ConfigError

# The configs: pretext training, per-layer evaluation, fine-tuning of the whole backbone.
PRETEXT, EVAL, FINE_TUNE = "pretext", "eval", "fine_tune"
RANDOM_INIT = "random_init"        # --hub_module of the random-init baseline.
FOLDER_PREFIX = "folder:"          # --dataset=folder:<root>: an image folder.
# The --task values that evaluate an export, and the config each takes.
EVALUATION_TASKS = {"linear_eval": EVAL, "fine_tune": FINE_TUNE, "cka": EVAL,
                    "probe_series": EVAL}
_UNSET = object()

OPTIMIZERS = ("sgd", "adam", "lars")
LR_SCHEDULES = ("step", "cosine")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
EVAL_MODELS = ("linear", "mlp")
POOL_MODES = ("adaptive_max", "adaptive_avg", "max", "avg")
TOKEN_POOLINGS = ("cls_mean", "cls", "mean")
COMBINE_MODES = ("avg_pool", "max_pool", "concat")
FEATURE_CACHES = ("memory", "workdir", "keep")
FEATURE_DTYPES = ("float32", "float16")
TEACHER_SCHEDULES = ("constant", "cosine")  # Of a teacher's momentum (methods/base.py).


@dataclasses.dataclass(frozen=True)
class Option:
  """One option. `kind`: string, int, float, bool, enum (absl checks the choices) or list.

  `choices` of a string option are checked with the config (`check_values`). `value` says how
  the flag's value becomes the config's: plain, size (H or H,W -> (H, W)), floats (a list ->
  a tuple of floats), ints (the same, integers >= 0) or shape (H,W,C -> a tuple). `check`:
  positive, nonnegative, probability ([0, 1]) or fraction ((0, 1]); None passes where the
  default is None. `eval_default`: the evaluation configs' default (per-layer evaluation and
  fine-tuning) where it differs. `affects_results` False: paths, logging, cadences, and how the
  same computation is run (strategy, XLA, op determinism); such options are not part of a
  workdir's identity, a grid cell's fingerprint or the comparison of results (NON_RESULT).
  """
  name: str
  kind: str
  default: Any
  help: str
  configs: Tuple[str, ...] = (PRETEXT, EVAL, FINE_TUNE)
  choices: Optional[Tuple[str, ...]] = None
  value: str = "plain"
  check: Optional[str] = None
  affects_results: bool = True
  aliases: Tuple[str, ...] = ()
  eval_default: Any = _UNSET

  @property
  def has_eval_default(self) -> bool:
    """Whether the evaluation configs' default differs (`eval_default`)."""
    return self.eval_default is not _UNSET

  def default_for(self, config: str) -> Any:
    if config in (EVAL, FINE_TUNE) and self.eval_default is not _UNSET:
      return self.eval_default
    return to_value(self, self.default)


_P, _E, _F = (PRETEXT,), (EVAL,), (FINE_TUNE,)
_ALL = (PRETEXT, EVAL, FINE_TUNE)
# The options in table order, each group after its title (docs/reference.md's sections).
_GROUPED = [
    "Experiment",
    Option("task", "string", None, "Pretext task (rotation, jigsaw, relative_patch_location, "
           "exemplar, simclr, barlow_twins, byol, moco, swav, dino, mae, colorization, "
           "inpainting, supervised), or an evaluation of an export: linear_eval (probes of "
           "every frozen layer), probe_series (those probes at every checkpoint that "
           "--eval_every_epochs kept), fine_tune (the whole backbone and a new linear head) or "
           "cka (linear CKA between every layer of it and of --cka_other, on --val_split).",
           configs=_P),
    Option("workdir", "string", None, "Directory for checkpoints, summaries, export and results.",
           affects_results=False),
    Option("run_eval", "bool", False, "After training, evaluate the pretext task on --val_split "
           "(loss, accuracy) into <workdir>/pretext_results.json.", configs=_P),
    Option("random_seed", "int", 0, "Seed for initialisation, shuffling and augmentation."),
    Option("deterministic", "bool", False, "TensorFlow's op determinism: with the same command, "
           "seed and machine, the same losses and accuracies (the input pipeline's augmentation "
           "then draws in order; slower: docs/usage.md).", affects_results=False),
    "Data",
    Option("dataset", "string", "shapes", "Dataset: the embedded 'shapes' (or 'shapes_small'), a "
           "TFDS name such as imagenet2012, places365_small, cifar10, or 'folder:<root>' for "
           "images in <root>/<split>/<class>/*.jpg|png."),
    Option("data_dir", "string", None, "TFDS data directory (default: TFDS's own default).",
           affects_results=False, aliases=("dataset_dir",)),
    Option("train_split", "string", "train", "Split to train on (TFDS slicing like "
           "'train[:90%]' allowed)."),
    Option("val_split", "string", "test", "Split for evaluation."),
    Option("shuffle_buffer", "int", 10_000, "Examples in the shuffle buffer.", check="positive"),
    "Preprocessing",
    Option("preprocessing", "string", None, "Comma-separated preprocessing ops, e.g. "
           "'resize,crop,flip_lr,-1_to_1,rotate'."),
    Option("resize_size", "list", None, "Size for 'resize': H or H,W.", configs=_P,
           value="size"),
    Option("crop_size", "list", None, "Size for the crop ops: H or H,W.", configs=_P,
           value="size"),
    Option("smaller_size", "int", None, "Shorter side for 'resize_small'.", configs=_P,
           check="positive"),
    Option("grayscale_probability", "float", 0.0, "Probability of 'to_gray' in training.",
           configs=_P, check="probability"),
    Option("min_crop_area", "float", 0.08, "Random-resized crops (inception_crop, "
           "inception_preprocess, exemplar_copies, simclr_views): the smallest share of the "
           "image a crop covers.", configs=_P, check="fraction"),
    Option("splits_per_side", "int", 3, "'crop_patches': the image is split into a "
           "splits_per_side x splits_per_side grid of patches.", configs=_P, check="positive"),
    Option("patch_jitter", "int", 0, "'crop_patches': patches are their grid cell less this "
           "many pixels per side, randomly placed in the cell in training.", configs=_P,
           check="nonnegative"),
    Option("num_of_inception_patches", "int", 8, "'exemplar_copies': augmented copies per "
           "image.", configs=_P, check="positive"),
    Option("color_jitter_strength", "float", 1.0, "'simclr_views': strength s of the colour "
           "jitter (brightness, contrast, saturation 0.8s, hue 0.2s, applied with probability "
           "0.8 in random order); SimCLR: 1.0 on ImageNet, 0.5 on CIFAR.", configs=_P,
           check="nonnegative"),
    Option("blur_probability", "float", 0.5, "'simclr_views': probability of a Gaussian blur "
           "(kernel a tenth of the crop side, sigma in [0.1, 2]) per view; SimCLR: 0.5 on "
           "ImageNet, 0 on CIFAR-size images.", configs=_P, check="probability"),
    Option("local_crops", "int", 0, "'simclr_views': small views per image beside the two "
           "(multi-crop: SwAV's 6, DINO's 8 at ImageNet's size), augmented as the two, in the "
           "batch's `local_views`; only methods that use them accept them (swav, dino).",
           configs=_P,
           check="nonnegative"),
    Option("local_crop_size", "list", None, "'simclr_views' with --local_crops: the local "
           "views' size, H or H,W (SwAV and DINO: 96 beside views of 224).", configs=_P,
           value="size"),
    Option("local_min_crop_area", "float", 0.05, "'simclr_views' with --local_crops: the "
           "smallest share of the image a local view covers.", configs=_P, check="fraction"),
    Option("local_max_crop_area", "float", 0.14, "'simclr_views' with --local_crops: the "
           "largest share of the image a local view covers (SwAV 0.14, DINO 0.4; the two "
           "views keep --min_crop_area to 1).", configs=_P, check="fraction"),
    Option("inpainting_mask", "string", "center", "'mask_region' (inpainting): the region "
           "hidden, the central square of --mask_area of the image, or blocks (squares of a "
           "quarter of each side at random places, round(16 x --mask_area) of them).",
           configs=_P, choices=specs.INPAINTING_MASKS),
    Option("mask_area", "float", 0.25, "'mask_region' (inpainting): the share of the image "
           "hidden (the context encoder's quarter).", configs=_P, check="fraction"),
    "Model",
    Option("architecture", "string", "resnet50", "Backbone: "
           f"{', '.join(architectures.ARCHITECTURES)}.", eval_default=None,
           choices=tuple(architectures.ARCHITECTURES)),
    Option("filters_factor", "int", None, "Width factor (standard width: 4 for ResNet and "
           "RevNet, 8 for VGG; default); for vit, its heads of 64 dimensions (3: ViT-Ti, 6: "
           "ViT-S, 12: ViT-B, the default).", check="positive"),
    Option("vit_patch_size", "int", 16, "vit: side of the square patches an image is cut into "
           "(16 at 224x224; 4 for 32x32 images).", check="positive"),
    Option("vit_position_embedding", "enum", "learned", "vit: learned position embeddings "
           "(interpolated bicubically for other image sizes) or fixed 2-D sine-cosine ones "
           "(MAE's).", choices=architectures.POSITION_EMBEDDINGS),
    Option("mode", "enum", "v2", "ResNet version: v1 post-activation, v2 pre-activation.",
           choices=architectures.MODES),
    Option("last_relu", "bool", True, "Apply the network's final ReLU (ResNet)."),
    Option("zero_init_residual", "bool", False, "Pretext training: start every residual branch "
           "of ResNet / RevNet at zero (last BN scale in v1, last conv in v2 and RevNet), so "
           "that short runs leave chance level sooner. Off in the 2019 code; the random-init "
           "baseline keeps the standard initialisation.", configs=_P),
    "Pretext heads",
    Option("embed_dim", "int", 1000, "jigsaw, relative_patch_location, exemplar: size of the "
           "per-patch (per-copy) embedding, the backbone's logits layer.", configs=_P,
           check="positive"),
    Option("num_permutations", "int", 100, "jigsaw: permutations in the generated set (the "
           "classes).", configs=_P, check="positive"),
    Option("perm_subset_size", "int", 8, "jigsaw: permutations drawn per training batch; each "
           "image is shown in all of them (evaluation uses all).", configs=_P, check="positive"),
    Option("margin", "float", 0.5, "exemplar: margin of the triplet semi-hard loss.",
           configs=_P, check="nonnegative"),
    Option("proj_hidden_dim", "int", None, "simclr, barlow_twins, byol, moco, swav, dino: hidden "
           "units of the projection head (byol: and of the predictor; default: the width of the "
           "backbone's pre_logits).", configs=_P,
           check="positive"),
    Option("proj_out_dim", "int", 128, "simclr, barlow_twins, byol, moco, swav: output of the "
           "projection head, the embedding the loss compares (the export's logits); dino: the "
           "bottleneck before the head's last layer.", configs=_P,
           check="positive"),
    Option("temperature", "float", 0.1, "simclr, moco: temperature of the contrastive loss; swav: "
           "of the prototype scores' softmax; dino: of the student's softmax.",
           configs=_P, check="positive"),
    Option("teacher_momentum", "float", None, "byol, moco, dino: momentum of the teacher's moving "
           "average of the online network at the start of training (default: the method's "
           "paper's, byol 0.996, moco 0.999, dino 0.996).", configs=_P, check="probability"),
    Option("teacher_momentum_schedule", "string", None, "byol, moco, dino: constant, or cosine "
           "(from --teacher_momentum at the start to 1 at the end; default: byol and dino "
           "cosine, moco constant).", configs=_P, choices=TEACHER_SCHEDULES),
    Option("export_teacher", "bool", False, "byol, moco, dino: export the teacher's network "
           "instead of the online one (both are in the checkpoints: given to a finished run, "
           "it re-exports without training again).", configs=_P),
    Option("moco_queue_size", "int", 65536, "moco: keys in the queue of negatives, a multiple of "
           "--batch_size.", configs=_P, check="positive"),
    Option("shuffle_bn_groups", "int", 8, "moco: each replica's batch is normalised in this many "
           "groups (as by that many GPUs), the keys' after a shuffle, so that a query and its "
           "key never share batch statistics (MoCo's shuffled batch norm); divides the "
           "per-replica batch.", configs=_P, check="positive"),
    Option("swav_prototypes", "int", 3000, "swav: prototypes (clusters) the views are assigned "
           "to.", configs=_P, check="positive"),
    Option("swav_epsilon", "float", 0.05, "swav: entropic regularisation of the Sinkhorn-Knopp "
           "codes (smaller: harder assignments).", configs=_P, check="positive"),
    Option("sinkhorn_iterations", "int", 3, "swav: iterations of the Sinkhorn-Knopp algorithm.",
           configs=_P, check="positive"),
    Option("dino_prototypes", "int", 65536, "dino: outputs of the head's weight-normalised last "
           "layer, over which the teacher's and the student's distributions are compared.",
           configs=_P, check="positive"),
    Option("teacher_temperature", "float", 0.04, "dino: temperature of the teacher's softmax "
           "after its warm-up (sharpening).", configs=_P, check="positive"),
    Option("warmup_teacher_temperature", "float", 0.04, "dino: the teacher's temperature at the "
           "start, rising linearly to --teacher_temperature over "
           "--warmup_teacher_temperature_epochs.", configs=_P, check="positive"),
    Option("warmup_teacher_temperature_epochs", "float", 0.0, "dino: epochs of the teacher "
           "temperature's warm-up.", configs=_P, check="nonnegative"),
    Option("center_momentum", "float", 0.9, "dino: momentum of the centre (the moving average "
           "of the teacher's outputs over the global batch) subtracted before its softmax.",
           configs=_P, check="probability"),
    Option("mask_ratio", "float", 0.75, "mae: share of each image's patches masked (the encoder "
           "sees the others; the loss is on these).", configs=_P, check="fraction"),
    Option("decoder_depth", "int", 8, "mae: transformer blocks of the decoder.", configs=_P,
           check="positive"),
    Option("decoder_width", "int", 512, "mae: width of the decoder's tokens (a multiple of 4 and "
           "of --decoder_heads); colorization, inpainting: channels of the dense decoder's "
           "first stage, halved at each later one (at least 32).", configs=_P,
           check="positive"),
    Option("decoder_heads", "int", 16, "mae: attention heads of the decoder's blocks.",
           configs=_P, check="positive"),
    Option("norm_pix_loss", "bool", True, "mae: reconstruct each patch's pixels normalised by "
           "their mean and standard deviation (the paper's better setting), not the pixels.",
           configs=_P),
    Option("decoder_end_points", "list", (), "colorization, inpainting: the backbone end points "
           "the dense decoder reads, the first where it starts and the others joined in at their "
           "resolution on its way up (a U-Net's skips; default: the architecture's deepest map "
           "alone, as the papers' decoders).", configs=_P),
    Option("dense_output_stride", "int", 1, "colorization, inpainting: the dense decoder's "
           "output is the input's size divided by this (colorization's paper: 4).", configs=_P,
           check="positive"),
    Option("color_rebalance", "float", 0.5, "colorization: lambda of the class rebalancing, "
           "weights ((1 - lambda) p + lambda / Q)^-1 of each colour bin by its smoothed "
           "frequency p (1: no rebalancing; the paper's 0.5).", configs=_P,
           check="probability"),
    Option("barlow_lambda", "float", 0.0051, "barlow_twins: weight of the off-diagonal terms of "
           "the cross-correlation in the loss (lambda).", configs=_P, check="nonnegative"),
    "Optimisation",
    Option("batch_size", "int", 256, "Global training batch size (source images).",
           check="positive"),
    Option("eval_batch_size", "int", None, "Global evaluation batch size (default: "
           "--batch_size).", check="positive", affects_results=False),
    Option("optimizer", "string", "sgd", "sgd (momentum 0.9), adam, or lars (momentum 0.9, "
           "trust coefficient 0.001, batch norm and biases not adapted: SimCLR's).",
           configs=_P + _F, choices=OPTIMIZERS),
    Option("lr", "float", 0.1, "Learning rate for a batch of --lr_scale_batch_size (fine_tune: "
           "of the new head; linear_eval: --probe_lrs).", configs=_P + _F, check="positive"),
    Option("backbone_lr", "float", None, "fine_tune: learning rate of the backbone, for a batch "
           "of --lr_scale_batch_size (default: --lr).", configs=_F, check="positive"),
    Option("lr_scale_batch_size", "int", 256, "Batch size --lr is given for; the rate is scaled "
           "linearly to --batch_size.", check="positive"),
    Option("epochs", "float", 90.0, "Training epochs (fractions allowed).", check="positive"),
    Option("warmup_epochs", "float", 0.0, "Epochs of linear warm-up.", check="nonnegative"),
    Option("decay_epochs", "list", (), "Epochs at which the rate is multiplied by "
           "--lr_decay_factor.", value="floats"),
    Option("lr_decay_factor", "float", 0.1, "Factor applied at each of --decay_epochs.",
           check="positive"),
    Option("lr_schedule", "enum", "step", "After warm-up: step (multiplied by "
           "--lr_decay_factor at each of --decay_epochs) or cosine (decayed to 0 at --epochs).",
           choices=LR_SCHEDULES),
    Option("weight_decay", "float", None, "L2 weight decay (default: 1e-4, VGG 5e-4; fine_tune: "
           "0; linear_eval: --probe_weight_decays).", configs=_P + _F, check="nonnegative",
           eval_default=0.0),
    "Running",
    Option("strategy", "string", "default", "tf.distribute strategy: default (one device), "
           "mirrored (all local GPUs, or logical CPU devices), multi_worker (the hosts of "
           "TF_CONFIG, or the tasks of the SLURM job step when srun started it; run the same "
           "command on each, with a --workdir they all see) or tpu (TPU_NAME, default the local "
           "TPU). With more than one replica, batch norm statistics are synchronised across "
           "replicas. fine_tune: the same, its --batch_size global.", configs=_P + _F,
           choices=STRATEGIES, affects_results=False),
    Option("jit_compile", "bool", False, "XLA-compile the training step (slower on CPU).",
           configs=_P, affects_results=False),
    Option("precision", "string", "float32", "float32, mixed_float16 or mixed_bfloat16: the "
           "compute dtype. mixed_* keep float32 variables and compute in 16 bits (GPU: "
           "mixed_float16, with dynamic loss scaling; TPU and recent GPUs: mixed_bfloat16). "
           "Slower on CPU. A workdir keeps the precision it was started with. fine_tune: "
           "float32 or mixed_bfloat16.", configs=_P + _F, choices=PRECISIONS),
    Option("save_checkpoints_steps", "int", None, "Save a checkpoint every N steps.",
           configs=_P, check="positive", affects_results=False),
    Option("save_checkpoints_secs", "float", 600.0, "Save a checkpoint every N seconds.",
           configs=_P + _F, affects_results=False),
    Option("keep_checkpoint_max", "int", 3, "Checkpoints to keep.", configs=_P,
           affects_results=False),
    Option("eval_every_epochs", "float", None, "Probes over training: keep a checkpoint every "
           "this many epochs (and at step 0 and the last step), never rotated away, and export "
           "each to <workdir>/exports/step_<N> (with its pretext accuracy under --run_eval) for "
           "--task=probe_series.", configs=_P, check="positive", affects_results=False),
    Option("eval_at_steps", "list", (), "Probes over training: keep checkpoints at these steps "
           "too (as --eval_every_epochs).", configs=_P, value="ints", affects_results=False),
    Option("log_every_steps", "int", 50, "Steps between progress lines and summaries.",
           configs=_P + _F, check="positive", affects_results=False),
    Option("serving_input_shape", "string", None, "Export input shape H,W,C (a leading 'None' "
           "batch dimension is accepted); default: the training input's image shape.",
           configs=_P, value="shape"),
    "Evaluations of an export (--task=linear_eval, --task=fine_tune)",
    Option("hub_module", "string", None, "linear_eval, fine_tune: the export to evaluate "
           f"(<pretext workdir>/export, or the workdir itself), or '{RANDOM_INIT}' for a "
           "randomly initialised --architecture/--filters_factor/--mode (the baseline).",
           configs=_E + _F),
    Option("cka_other", "string", None, "cka: the backbone compared with --hub_module: an "
           f"export (or pretext workdir), '{RANDOM_INIT}' (--hub_module's architecture, freshly "
           "initialised) or empty for --hub_module itself (its layers with each other).",
           configs=_E),
    Option("eval_model", "enum", "linear", "linear_eval: head per layer.", configs=_E,
           choices=EVAL_MODELS),
    Option("channels_hidden", "int", 1000, "linear_eval: hidden units of the mlp head.",
           configs=_E, check="positive"),
    Option("pool_mode", "enum", "adaptive_max", "linear_eval: pooling of end points with more "
           "than 9000 features.", configs=_E, choices=POOL_MODES),
    Option("token_pooling", "enum", "cls_mean", "linear_eval: the features of a transformer's "
           "tokens (vit's blocks and final_norm): the class token (cls), the mean of the patch "
           "tokens (mean) or both, concatenated (cls_mean).", configs=_E, choices=TOKEN_POOLINGS),
    Option("combine_patches", "enum", "avg_pool", "linear_eval: how per-patch features of patch "
           "inputs are combined.", configs=_E, choices=COMBINE_MODES),
    Option("eval_preprocessing", "string", None, "linear_eval, fine_tune: deterministic "
           "preprocessing of both splits (fine_tune: of the test split, and with its training "
           "augmentation of the training split unless --preprocessing is given; default: the "
           "export's).", configs=_E + _F),
    Option("on_the_fly", "bool", False, "linear_eval: the original protocol (training "
           "--preprocessing with augmentation through the frozen backbone every step) instead "
           "of cached features.", configs=_E),
    Option("probe_lrs", "list", ("0.1",), "linear_eval: the learning rates (for a "
           "batch of --lr_scale_batch_size) of each layer's heads, trained together with every "
           "--probe_weight_decays on the training split less a held-out tenth (at most 50000 "
           "examples); the head with the best top-1 on that tenth is tested. One rate and one "
           "decay: that head alone, on the whole training split.", configs=_E,
           value="floats", check="positive"),
    Option("probe_weight_decays", "list", ("0", "1e-5", "1e-4", "1e-3", "0.01", "0.03", "0.1"),
           "linear_eval: the L2 weight decays of each layer's heads (see --probe_lrs).",
           configs=_E, value="floats", check="nonnegative"),
    Option("probe_decorrelate", "bool", True, "linear_eval: the heads take the standardised "
           "features on their principal axes (the training rows' covariance) and step along "
           "each by its inverse curvature, so that weakly regularised heads converge (the same "
           "classifiers; the covariance of each layer's D features takes about 36 D^2 bytes "
           "at a time). Off: standardised features, plain SGD.", configs=_E),
    Option("probe_memory_gb", "float", None, "linear_eval: host memory for the probes' "
           "features and heads, beyond the process's runtime and backbone (default: half of the "
           "SLURM job's memory per node, or of this machine's available memory). Layers whose "
           "heads do not fit together train in groups; a run that cannot fit one layer's heads "
           "stops before extracting.", configs=_E, check="positive", affects_results=False),
    Option("feature_dtype", "enum", "float32", "linear_eval: the dtype the extracted features "
           "are stored in (float16: half the memory and disk).", configs=_E,
           choices=FEATURE_DTYPES),
    Option("knn_k", "int", None, "linear_eval: also report k-nearest-neighbour accuracy with "
           "this k.", configs=_E, check="positive"),
    Option("train_fraction", "float", None, "linear_eval, fine_tune: train on this fraction of "
           "each class (low-label evaluation).", configs=_E + _F, check="fraction"),
    Option("examples_per_class", "int", None, "linear_eval, fine_tune: train on this many "
           "examples of each class (low-label evaluation).", configs=_E + _F, check="positive"),
    Option("feature_cache", "enum", "memory", "linear_eval: where the extracted features are "
           "kept: memory only; workdir: also in <workdir>/feature_cache while the evaluation runs "
           "(an interrupted one goes on without extracting again), removed once results.json is "
           "written; keep: the same, kept.", configs=_E, choices=FEATURE_CACHES,
           affects_results=False),
    Option("feature_cache_dir", "string", None, "linear_eval: a directory of your own to cache "
           "extracted features in, shared by evaluations and kept (instead of --feature_cache).",
           configs=_E, affects_results=False),
    Option("force", "bool", False, "linear_eval, fine_tune: re-run even if results for the "
           "same config exist.", configs=_E + _F, affects_results=False),
]
_OPTIONS = [o for o in _GROUPED if isinstance(o, Option)]
GROUPS: Tuple[str, ...] = tuple(e for e in _GROUPED if isinstance(e, str))


def _group_of(grouped: Sequence[Any]) -> Dict[str, str]:
  """Each option's group: the title before it."""
  out, title = {}, None
  for entry in grouped:
    if isinstance(entry, str):
      title = entry
    else:
      out[entry.name] = title
  return out


GROUP_OF: Dict[str, str] = _group_of(_GROUPED)


def in_groups() -> List[Tuple[str, List[Option]]]:
  """(group title, its options) in table order."""
  return [(g, [o for o in _OPTIONS if GROUP_OF[o.name] == g]) for g in GROUPS]
OPTIONS: Dict[str, Option] = {o.name: o for o in _OPTIONS}
ALIASES: Dict[str, str] = {alias: o.name for o in _OPTIONS for alias in o.aliases}
# Option names (aliases included) whose value does not change a run's results.
NON_RESULT = tuple(n for o in _OPTIONS if not o.affects_results for n in (o.name,) + o.aliases)
# Pretext options that act only after training, on what every run redoes from the last
# checkpoint (the pretext evaluation, the export): a workdir's training can go on under other
# values of them, and the files they shape are rewritten with the new ones (--export_teacher on
# a finished run exports its teacher, which is in every checkpoint, without training again).
AFTER_TRAINING = ("run_eval", "val_split", "serving_input_shape", "export_teacher")


def of(config: str) -> List[Option]:
  """The options of one config (PRETEXT or EVAL), in table order."""
  return [o for o in _OPTIONS if config in o.configs]


# ----------------------------------------------------------------------------- values
def _size(values: Sequence[Any], name: str) -> Tuple[int, int]:
  try:
    sizes = tuple(int(v) for v in values)
  except (TypeError, ValueError):
    sizes = ()
  if len(sizes) not in (1, 2) or min(sizes) <= 0:
    raise ConfigError(f"--{name}={','.join(str(v) for v in values)} must be H or H,W positive "
                      "integers")
  return sizes * 2 if len(sizes) == 1 else sizes


def _shape(value: str, name: str) -> Tuple[int, int, int]:
  parts = [p.strip() for p in str(value).split(",")]
  if len(parts) == 4 and parts[0].lower() == "none":
    parts = parts[1:]
  try:
    shape = tuple(int(p) for p in parts)
  except ValueError:
    shape = ()
  if len(shape) != 3 or min(shape) <= 0:
    raise ConfigError(f"--{name}={value!r} must be H,W,C (optionally None,H,W,C)")
  return shape


def to_value(option: Option, flag_value: Any) -> Any:
  """A flag's value as the config holds it (see Option.value); ConfigError if malformed."""
  if flag_value is None or option.value == "plain":
    return tuple(flag_value) if isinstance(flag_value, list) else flag_value
  if option.value == "size":
    if isinstance(flag_value, (int, str)):
      flag_value = str(flag_value).split(",")
    return _size(flag_value, option.name) if list(flag_value) else None
  if option.value == "floats":
    items = str(flag_value).split(",") if isinstance(flag_value, str) else flag_value
    try:
      return tuple(float(v) for v in items if str(v).strip())
    except ValueError:
      raise ConfigError(f"--{option.name}={','.join(str(v) for v in items)} must be "
                        "numbers") from None
  if option.value == "ints":
    items = str(flag_value).split(",") if isinstance(flag_value, str) else flag_value
    try:
      values = tuple(int(v) for v in items if str(v).strip())
    except ValueError:
      values = (-1,)
    if min(values, default=0) < 0:
      raise ConfigError(f"--{option.name}={','.join(str(v) for v in items)} must be integers "
                        ">= 0")
    return values
  if option.value == "shape":
    return _shape(flag_value, option.name) if str(flag_value) else None
  raise ValueError(f"option {option.name}: unknown value kind {option.value!r}")


def values_from_flags(flag_values) -> Dict[str, Any]:
  """Every option's config value from parsed absl flags (`flags.FLAGS`)."""
  return {o.name: to_value(o, flag_values[o.name].value) for o in _OPTIONS}


def config_kwargs(values: Mapping[str, Any], config: str) -> Dict[str, Any]:
  """The values that the config (PRETEXT or EVAL) takes."""
  return {o.name: values[o.name] for o in of(config) if o.name in values}


# ------------------------------------------------------------------------------- checks
def require(condition: bool, message: str) -> None:
  """ConfigError(`message`) unless `condition`: the checks of every config."""
  if not condition:
    raise ConfigError(message)


def is_int(value: Any) -> bool:
  """An int (or a NumPy integer), not a bool."""
  if isinstance(value, bool):
    return False
  return isinstance(value, int) or (type(value).__module__ == "numpy" and
                                    float(value).is_integer())


def check_values(config: Any, config_name: str) -> None:
  """Checks the values of a config's options: choices, ranges, the schedule. ConfigError (one
  line naming the flag, the value and what is valid) at the first bad one."""
  for option in of(config_name):
    value = getattr(config, option.name)
    if value is None and option.default_for(config_name) is None:
      continue
    name = option.name
    if option.choices is not None:
      require(value in option.choices,
             f"--{name}={value!r} is not valid; choices: {', '.join(option.choices)}")
    optional = " or None" if option.default_for(config_name) is None else ""
    if option.kind == "list" and option.check in ("positive", "nonnegative"):
      bound = "> 0" if option.check == "positive" else ">= 0"
      require(len(value) > 0 and all(
          (v > 0 if option.check == "positive" else v >= 0) and math.isfinite(v) for v in value),
              f"--{name}={','.join(f'{v:g}' for v in value)} must be one or more numbers "
              f"{bound}")
    elif option.check == "positive" and option.kind == "int":
      require(is_int(value) and value > 0,
             f"--{name} must be a positive integer{optional}, got {value!r}")
    elif option.check == "positive":
      require(isinstance(value, (int, float)) and value > 0 and math.isfinite(value),
             f"--{name} must be a positive number, got {value!r}")
    elif option.check == "nonnegative":
      kind = "" if option.kind == "int" else "a number "
      require(isinstance(value, (int, float)) and value >= 0 and math.isfinite(value),
             f"--{name} must be {kind}>= 0, got {value!r}")
    elif option.check == "probability":
      require(isinstance(value, (int, float)) and 0 <= value <= 1,
             f"--{name} must be in [0, 1], got {value!r}")
    elif option.check == "fraction":
      require(isinstance(value, (int, float)) and 0 < value <= 1,
             f"--{name} must be in (0, 1], got {value!r}")
  require(config.warmup_epochs <= config.epochs,
         f"--warmup_epochs={config.warmup_epochs:g} is longer than the run (--epochs="
         f"{config.epochs:g}); pass --warmup_epochs between 0 and {config.epochs:g}")
  decay = list(config.decay_epochs)
  require(decay == sorted(decay), f"--decay_epochs must be increasing, got {decay}")
  late = [e for e in decay if e >= config.epochs]
  require(not late, f"--decay_epochs={','.join(f'{e:g}' for e in decay)}: "
          f"{', '.join(f'{e:g}' for e in late)} at or after the end of the run (--epochs="
          f"{config.epochs:g}) would never act; pass decays below {config.epochs:g}"
          + (f" (--decay_epochs={','.join(f'{e:g}' for e in decay if e < config.epochs)})"
             if len(late) < len(decay) else " or --decay_epochs= for none"))


# ----------------------------------------------------------------------------- identity
def _comparable(value: Any) -> Any:
  """A value as JSON holds it (tuples as lists, whole floats as ints), for comparing a config
  with one read back from a file."""
  if isinstance(value, (tuple, list)):
    return [_comparable(v) for v in value]
  if isinstance(value, float) and value.is_integer():
    return int(value)
  return value


def result_differences(before: Mapping[str, Any], after: Mapping[str, Any], config: str,
                       ignore: Sequence[str] = ()) -> List[Tuple[str, Any, Any]]:
  """(option, before, after) of each option of `config` that changes results (not NON_RESULT)
  and differs between two configs as dicts (a config's to_dict(), or its JSON read back; an
  option missing from one has its default there), in table order; `ignore`: names left out."""
  out = []
  for option in of(config):
    if not option.affects_results or option.name in ignore:
      continue
    default = option.default_for(config)
    old = _comparable(before.get(option.name, default))
    new = _comparable(after.get(option.name, default))
    if old != new:
      out.append((option.name, before.get(option.name, default),
                  after.get(option.name, default)))
  return out


def format_differences(differences: Sequence[Tuple[str, Any, Any]]) -> str:
  """`lr 0.1 -> 0.0005, mode 'v2' -> 'v1'`."""
  def shown(value):
    if isinstance(value, (list, tuple)):
      return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) or "(none)"
    if isinstance(value, float):
      return f"{value:g}"
    try:
      return f"{float(value):g}" if isinstance(value, str) else repr(value)
    except ValueError:
      return repr(value)
  return ", ".join(f"{name} {shown(old)} -> {shown(new)}" for name, old, new in differences)


# ----------------------------------------------------------------------------- schedules
SCHEDULE_EPOCHS = ("warmup_epochs", "decay_epochs")


def scale_schedule(base: Mapping[str, Any], given: Mapping[str, Any]
                   ) -> Tuple[Dict[str, Any], Optional[str]]:
  """A schedule written for one length, run at another: where `given` (flags set over a
  flagfile, e.g. on the command line or in a grid file) sets --epochs to other than `base` (the
  flagfile's flags) does and sets neither --warmup_epochs nor --decay_epochs, the flagfile's
  warm-up and decays scale with it, so that a short (smoke) run keeps the schedule's shape.
  Returns (the scaled flags, a note saying what was scaled) or ({}, None). Values are flag
  values (numbers, strings, lists)."""
  if "epochs" not in given or "epochs" not in base or any(k in given for k in SCHEDULE_EPOCHS):
    return {}, None
  old = to_value(OPTIONS["epochs"], float(base["epochs"]))
  new = to_value(OPTIONS["epochs"], float(given["epochs"]))
  if old <= 0 or new == old:
    return {}, None
  def scale(epoch: float) -> float:
    return float(f"{epoch * new / old:.6g}")

  scaled, parts = {}, []
  warmup = float(base.get("warmup_epochs") or 0.0)
  if warmup:
    scaled["warmup_epochs"] = scale(warmup)
    parts.append(f"--warmup_epochs {warmup:g} -> {scale(warmup):g}")
  decays = to_value(OPTIONS["decay_epochs"], base.get("decay_epochs") or ())
  if decays:
    scaled["decay_epochs"] = tuple(scale(e) for e in decays)
    parts.append(f"--decay_epochs {','.join(f'{e:g}' for e in decays)} -> "
                 f"{','.join(f'{scale(e):g}' for e in decays)}")
  if not parts:
    return {}, None
  return scaled, (f"--epochs={new:g} over the flagfile's {old:g}: {' and '.join(parts)}, scaled "
                  "with it (set them to choose your own)")


# --------------------------------------------------------------------------- flags, configs
def define_flags(flag_values, module_name: Optional[str] = None) -> None:
  """Defines every option as an absl flag (and its aliases) in `flag_values`, as flags of
  `module_name` (the program's, for its --help)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  define = {"string": flags.DEFINE_string, "int": flags.DEFINE_integer,
            "float": flags.DEFINE_float, "bool": flags.DEFINE_boolean,
            "list": flags.DEFINE_list}
  where = dict(flag_values=flag_values, module_name=module_name)
  for o in _OPTIONS:
    default = list(o.default) if isinstance(o.default, tuple) else o.default
    if o.kind == "enum":
      flags.DEFINE_enum(o.name, default, list(o.choices), o.help, **where)
    else:
      define[o.kind](o.name, default, o.help, **where)
    for alias in o.aliases:
      flags.DEFINE_alias(alias, o.name, **where)


def make_config(class_name: str, config: str, base: type, module: str,
                extra: Sequence[Tuple[str, Any, Any]] = (), frozen: bool = False) -> type:
  """A dataclass of the options of `config` (PRETEXT or EVAL), fields in table order with
  their defaults, then `extra` (name, type, dataclasses.field or default) fields that are not
  flags; methods from `base`."""
  fields = []
  for o in of(config):
    default = o.default_for(config)
    fields.append((o.name, Any, dataclasses.field(default=default)))
  fields += [(name, type_, value if isinstance(value, dataclasses.Field) else
              dataclasses.field(default=value)) for name, type_, value in extra]
  cls = dataclasses.make_dataclass(class_name, fields, bases=(base,), frozen=frozen)
  cls.__module__ = module
  return cls


def flags_to_args(flags: Mapping[str, Any]) -> List[str]:
  """Flags as command-line arguments: --name=value, --name / --noname for booleans."""
  args = []
  for name, value in flags.items():
    if value is True:
      args.append(f"--{name}")
    elif value is False:
      args.append(f"--no{name}")
    else:
      args.append(f"--{name}={value}")
  return args
