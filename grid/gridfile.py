"""Grid files: TOML -> a Grid of Cells, with the baseline cells it asks for.

A grid file (TOML, plain data; configs/grids/*.toml) names cells. Each cell is one pretext
training + export (train_and_eval.py --run_eval) followed by the evaluations of that export
(train_and_eval.py --task=linear_eval or fine_tune --hub_module=<cell>/export); a random-init
baseline cell is the evaluations alone (--hub_module=random_init).

Grid file sections (all optional but [[cells]]):
  [grid]        name, description.
  [defaults]    flags of every step of every cell (dataset, data_dir, ...).
  [pretext]     flags of every pretext training, over the method's flagfile; flagfile: the
                default flagfile of the cells (default "configs/{method}/{dataset}.flags"; for
                an image folder, dataset "folder:<root>", "configs/{method}/shapes.flags").
  [evaluation]  the per-layer evaluation of every cell: flagfile (an evaluation flagfile: task
                linear_eval, the default, or fine_tune), name (default "linear_eval": results
                go to <cell>/<name>/results.json), flags; patch_flagfile: the same evaluation's
                flagfile for the cells whose training cuts patches (the patch methods: their
                exports take patches, probed each patch alone and combined per layer), and for
                the random-init baselines on those patches.
  [[evaluations]] instead of [evaluation]: several evaluations of every cell, each as above with
                its own name (e.g. one on ImageNet, one on Places).
  [baselines]   random_init (bool): a random-init baseline per architecture, width and
                evaluation input of the trained cells, each cell paired with the one on its
                input; random_init_flags (table; eval_preprocessing there adds a baseline on
                that input), supervised (bool), supervised_flagfile, supervised_flags (table).
  [slurm]       what every cell's SLURM job asks for (--executor=slurm): partition, account,
                qos, time, nodes, tasks_per_node, cpus_per_task, gpus_per_node, mem, extra
                (other sbatch options), setup (shell lines); and max_queued, max_retries
                (grid/slurm_settings.py). [baselines] random_init_slurm / supervised_slurm and
                a cell's slurm table override it.
  [[cells]]     method (a name, or a list: an axis), flagfile (default: [pretext]'s), flags
                (table), axes (table of lists, expanded as a product), exclude (list of tables),
                eval_flags (table, over every evaluation's flags), tag (name suffix), slurm
                (table, over [slurm]).
Precedence, lowest first: flagfile, [defaults], [pretext] or [evaluation], the cell's flags or
eval_flags, its axis values. method = "random_init" makes evaluation-only baseline cells.
"""

import itertools
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import architectures
from core import files
from core import options
from core import specs
from core.options import RANDOM_INIT
from grid import slurm_settings
from grid.cells import Cell, Grid, PRETEXT, SUPERVISED, cell_name, sanitize
from grid.common import GridError, REPO_ROOT, SLURM_DIR
from grid.flags import (FlagChecker, FlagInfo, RUNNER_FLAGS, as_bool, flag_value,
                        same_value)

DEFAULT_FLAGFILE = "configs/{method}/{dataset}.flags"
# The flagfiles of an image folder (dataset "folder:<root>") under DEFAULT_FLAGFILE: those of
# the embedded set, sized for small images on a few CPU cores (every image resized to 32x32).
FOLDER_FLAGFILE_DATASET = "shapes"

SECTIONS = ("grid", "defaults", "pretext", "evaluation", "evaluations", "baselines", "slurm",
            "cells")
GRID_KEYS = ("name", "description")
DEFAULT_EVALUATION = "linear_eval"
BASELINE_KEYS = ("random_init", "random_init_flags", "random_init_slurm", "supervised",
                 "supervised_flagfile", "supervised_flags", "supervised_slurm")
# The flags that make the input an export is evaluated on (and a random-init baseline's).
INPUT_FLAGS = ("eval_preprocessing",) + specs.EVAL_PARAM_FLAGS
# The options a cell's name gives as its architecture, variant and width (not as axes).
IDENTITY_OPTIONS = ("architecture", "filters_factor") + architectures.VARIANT_OPTIONS
CELL_KEYS = ("method", "flagfile", "flags", "axes", "exclude", "eval_flags", "tag", "slurm")

# A smoke run (benchmark.py --smoke): every cell and step as the grid file has them (image sizes,
# preprocessing, patch settings, precision, evaluations and their inputs, baselines) but a few
# images and steps, and each width divided by the architecture's standard width (ResNet-50 w4 ->
# w1, w16 -> w4; VGG19 w8 -> w1) or by the grid's narrowest width of it where that is less
# (ResNet-50 w1, w2 stay w1, w2). Splits are cut to their first images; --epochs=1 over them
# scales each step's warm-up and decays, its flagfile's or the grid file's.
SMOKE_PRETEXT = dict(train=16, val=16, batch_size=8)
SMOKE_PROBE = dict(train=64, val=32, batch_size=16)
# The probes' grid of head settings in a smoke run: its first rate and first two decays (the choice
# on a minival is still made, over two settings instead of 14 heads per layer: at 1000 classes
# those take several GiB per cell).
SMOKE_PROBE_SETTINGS = dict(probe_lrs=1, probe_weight_decays=2)
SMOKE_FINE_TUNE = dict(val=32, batch_size=8)  # On its whole training split: a fraction of it.



class _Parser(FlagChecker):
  """Turns a parsed TOML grid into cells; every error names the file, the cell and the key."""

  def __init__(self, path: str, data: Mapping[str, Any], known: Optional[Mapping[str, FlagInfo]],
               base_dir: str, overrides: Mapping[str, Any], smoke: bool = False):
    super().__init__(path, known, base_dir)
    self.data = data
    self.overrides = dict(overrides)
    self.smoke = smoke
    # A smoke run's: the grid's narrowest width of each architecture (load_grid).
    self.narrowest: Dict[str, int] = {}
    # Per evaluation: its flagfile's flags, and those the grid file sets over them.
    self.eval_flagfiles: Dict[str, Dict[str, Any]] = {}
    self.eval_given: Dict[str, Dict[str, Any]] = {}
    # Per evaluation with a patch_flagfile: (its flags, the effective flags over them) for the
    # cells whose exports take patches.
    self.eval_patches: Dict[str, Tuple[Dict[str, Any], Dict[str, Any]]] = {}

  def evaluation_base(self, name: str, flags: Dict[str, Any], patches: bool
                      ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(flagfile flags, effective flags) of evaluation `name` for a cell whose export takes
    patches (`patches`) or whole images: its patch_flagfile's for patches where it has one."""
    if patches and name in self.eval_patches:
      return self.eval_patches[name]
    return self.eval_flagfiles[name], flags

  def smoke_width(self, arch: str, width: Optional[int]) -> Optional[int]:
    """A smoke run's width of a cell of `width`: divided by the architecture's smoke_divisor
    (core/architectures.py), or by the grid's narrowest width of it where that is less (so
    that widths below the standard one stay apart: shapes_full's w1 and w2), rounded, at
    least 1."""
    known = architectures.ARCHITECTURES.get(arch)
    if not self.smoke or width is None or not known:
      return width
    divisor = min(known.smoke_divisor or known.filters_factor, self.narrowest.get(arch, width))
    return max(1, round(width / divisor))

  def smoke_flags(self, flags: Mapping[str, Any], sizes: Mapping[str, int], where: str
                  ) -> Dict[str, Any]:
    """The flags a smoke run sets over a step's `flags`: its splits' first images, the batch
    sizes, one epoch and the schedule scaled to it (empty outside a smoke run)."""
    if not self.smoke:
      return {}
    smoke = dict(epochs="1", batch_size=str(sizes["batch_size"]),
                 eval_batch_size=str(sizes["batch_size"]))
    # The step's warm-up and decays, its flagfile's or the grid file's, scale with its epochs.
    self.fit_schedule(flags, smoke, {"epochs": smoke["epochs"]}, where)
    for key in ("train", "val"):
      if key not in sizes:
        continue
      split = str(self.default(flags, f"{key}_split") or "")
      # A split's name, or its first examples ("train[:5000]", "train[:90%]").
      match = re.fullmatch(r"([\w.-]+)(?:\[:(\d+)(%?)\])?", split)
      if not match:
        self.fail(where, f"{key}_split = {split!r}: a smoke run cuts a split to its first "
                  "images, so it needs a split's name or its first examples (e.g. \"train\", "
                  "\"train[:90%]\")")
      name, count, percent = match.groups()
      first = sizes[key] if count is None or percent else min(sizes[key], int(count))
      smoke[f"{key}_split"] = f"{name}[:{first}]"
    return smoke

  def fit_schedule(self, flagfile: Mapping[str, Any], flags: Dict[str, Any],
                   given: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """`flags` (a flagfile's, with `given` set over them) with the flagfile's warm-up and decays
    scaled to an --epochs that `given` sets (core/options.scale_schedule), as train_and_eval.py
    does for flags given over a flagfile."""
    try:
      scaled, _ = options.scale_schedule(flagfile, given)
    except (ValueError, TypeError) as e:
      self.fail(where, f"epochs: {e}")
    for name, value in scaled.items():
      flags[name] = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else \
          f"{value:g}"
    return flags

  def default(self, flags: Mapping[str, Any], name: str) -> Any:
    if name in flags:
      return flags[name]
    return options.OPTIONS[name].default

  def identity(self, flags: Mapping[str, Any], where: str):
    """(architecture, variant or None (architectures.variant_label: ResNet's mode, ViT's patch
    size), width) of a cell's effective flags."""
    arch = str(self.default(flags, "architecture"))
    mode = architectures.variant_label(arch, lambda name: self.default(flags, name))
    width = flags.get("filters_factor")
    try:
      width = int(width) if width is not None else architectures.standard_width(arch)
    except ValueError:
      self.fail(where, f"filters_factor = {width!r} is not an integer")
    return arch, mode, width

  def parse(self) -> Grid:
    data = self.data
    self.check_keys(data, SECTIONS, "top level")
    info = self.table(data.get("grid", {}), "[grid]")
    self.check_keys(info, GRID_KEYS, "[grid]")
    name = str(info.get("name") or os.path.splitext(os.path.basename(self.path))[0])
    defaults = self.flags(data.get("defaults", {}), "[defaults]")
    defaults.update(self.overrides)
    self.defaults = defaults
    pretext = dict(self.table(data.get("pretext", {}), "[pretext]"))
    default_flagfile = pretext.pop("flagfile", DEFAULT_FLAGFILE)
    if not isinstance(default_flagfile, str) or not default_flagfile:
      self.fail("[pretext]", f"flagfile = {default_flagfile!r}: a path, e.g. "
                "\"configs/{method}/imagenet.flags\"")
    pretext = self.flags(pretext, "[pretext]")
    if "evaluation" in data and "evaluations" in data:
      self.fail("top level", "give either [evaluation] or [[evaluations]], not both")
    if "evaluations" in data:
      entries = data["evaluations"]
      if not isinstance(entries, list) or not entries:
        self.fail("[[evaluations]]", "a non-empty list of tables with name and flagfile")
      evaluations = {}
      for index, entry in enumerate(entries, 1):
        eval_name, flags = self.evaluation(entry, f"[[evaluations]] #{index}",
                                           required_name=True)
        if eval_name in evaluations:
          self.fail(f"[[evaluations]] #{index}", f"name {eval_name!r} is used twice")
        evaluations[eval_name] = flags
    else:
      eval_name, flags = self.evaluation(data.get("evaluation", {}), "[evaluation]")
      evaluations = {eval_name: flags}
    baselines = self.table(data.get("baselines", {}), "[baselines]")
    self.check_keys(baselines, BASELINE_KEYS, "[baselines]")
    for key in ("random_init", "supervised"):
      if not isinstance(baselines.get(key, False), bool):
        self.fail("[baselines]", f"{key} = {baselines[key]!r}: use true or false")
    slurm = slurm_settings.parse(data.get("slurm", {}), "[slurm]", grid_wide=True)
    entries = data.get("cells")
    if not isinstance(entries, list) or not entries:
      self.fail("top level", "no [[cells]]: add at least one, e.g.\n  [[cells]]\n  method = "
                "\"rotation\"\n  axes = { architecture = [\"resnet50\", \"vgg19\"] }")

    ctx = dict(defaults=defaults, pretext=pretext, evaluations=evaluations,
               flagfile=default_flagfile, slurm=slurm)
    cells: List[Cell] = []
    for index, entry in enumerate(entries, 1):
      cells.extend(self.expand(entry, index, ctx))
    explicit = {c.name for c in cells}
    identities = []
    for c in cells:
      if c.pretext_flags is not None and (c.architecture, c.mode, c.width) not in identities:
        identities.append((c.architecture, c.mode, c.width))
    added = {kind: slurm_settings.job_settings(slurm, slurm_settings.parse(
        baselines.get(f"{kind}_slurm", {}), f"[baselines] {kind}_slurm")) for kind in
             ("supervised", RANDOM_INIT)}

    def add(cell: Cell):
      if cell.name not in explicit:
        cell.slurm = added[cell.kind]
        cells.append(cell)
        explicit.add(cell.name)

    if baselines.get("supervised"):
      where = "[baselines] supervised"
      flagfile = str(baselines.get("supervised_flagfile", default_flagfile))
      extra = self.flags(baselines.get("supervised_flags", {}), f"{where}_flags")
      for arch, mode, width in identities:
        overrides = dict(extra, **_identity_flags(arch, mode, width))
        add(self.make_cell("supervised", flagfile, overrides, {}, {}, None, where, ctx,
                           scale_width=False))
    if baselines.get("random_init"):  # For the supervised baselines too.
      self.add_random_init(baselines, [c for c in cells if c.pretext_flags is not None],
                           identities, add, ctx)
    self.check_unique(cells)
    return Grid(path=self.path, name=name, description=str(info.get("description", "")),
                cells=cells, slurm=slurm_settings.grid_settings(slurm))

  def add_random_init(self, baselines: Mapping[str, Any], trained: Sequence[Cell],
                      identities, add, ctx):
    """One random-init baseline per architecture, version, width and other backbone settings
    (model_settings: named by them, e.g. random_init-vit_p4-w3-vit_position_embeddingsincos) and
    per input its trained cells are evaluated on (eval_input), and each trained cell's `baseline`
    its name. Tags: none for the first whole-image input of an architecture, then "input2", ...;
    "patches", "patches2", ... on patches. random_init_flags that give eval_preprocessing add a
    baseline on that input too (the first, untagged). Where every evaluation sees its images through the
    deterministic pass only (`deterministic_only`), inputs that differ only in ops that act in
    training alone share a baseline: a cached probe sees 'resize,flip_lr,-1_to_1' and
    'resize,-1_to_1' alike."""
    where = "[baselines] random_init"
    extra = self.flags(baselines.get("random_init_flags", {}), f"{where}_flags")
    given = {k: v for k, v in extra.items() if k in INPUT_FLAGS}
    if given and "eval_preprocessing" not in given:
      self.fail(f"{where}_flags", f"{', '.join(given)} without eval_preprocessing: each "
                "baseline is evaluated on the input of its trained cells (their export's "
                "evaluation preprocessing and sizes); give eval_preprocessing too for one more "
                "baseline on an input of your own, or leave these out")
    shared = {k: v for k, v in extra.items() if k not in INPUT_FLAGS}
    names = list(ctx["evaluations"])
    made: List[Tuple[Tuple[str, Optional[str], Optional[int]], Tuple[Dict[str, Any], ...],
                     Cell]] = []
    counts: Dict[Tuple[Any, bool], int] = {}

    def baseline(ident, inputs: Tuple[Dict[str, Any], ...],
                 deterministic: Tuple[bool, ...]) -> str:
      """The baseline of `ident` on `inputs` (one per evaluation of `names`), made if new;
      `deterministic`: per evaluation, whether the one asking sees the deterministic pass only."""
      for other_ident, other_inputs, other in made:
        if other_ident == ident and all(
            self.same_input(a, b, alike and self.deterministic_only(other.evaluations[n]))
            for a, b, alike, n in zip(other_inputs, inputs, deterministic, names)):
          return other.name
      patches = specs.makes_patches(str(inputs[0].get("eval_preprocessing") or ""))
      counts[ident, patches] = count = counts.get((ident, patches), 0) + 1
      base = "patches" if patches else "input"
      tag = f"{base}{count}" if count > 1 else (base if patches else None)
      settings = dict(ident[3])
      overrides = dict(shared, **inputs[0], **_identity_flags(*ident[:3]), **settings)
      cell = self.make_cell(RANDOM_INIT, None, {}, settings, overrides, tag, where, ctx,
                            scale_width=False)
      for eval_name, flags in zip(names, inputs):  # Each evaluation on its own input.
        cell.evaluations[eval_name] = dict(
            {k: v for k, v in cell.evaluations[eval_name].items() if k not in INPUT_FLAGS},
            **flags)
      made.append((ident, inputs, cell))
      add(cell)
      return cell.name

    if given:
      for ident in identities:
        baseline((*ident, ()), tuple(dict(given) for _ in names), (False,) * len(names))
    for c in trained:
      try:
        inputs = tuple(self.eval_input(c.pretext_flags, c.evaluations[n]) for n in names)
      except ValueError as e:  # A malformed --preprocessing.
        self.fail(c.origin, str(e))
      ident = (c.architecture, c.mode, c.width, self.model_settings(c.pretext_flags))
      c.baseline = baseline(ident, inputs,
                            tuple(self.deterministic_only(c.evaluations[n]) for n in names))

  def model_settings(self, flags: Mapping[str, Any]) -> Tuple[Tuple[str, Any], ...]:
    """The backbone settings (architectures.MODEL_SETTINGS) beside the architecture's variant
    that `flags` set to other than their defaults, e.g. (('vit_position_embedding', 'sincos'),):
    a random-init baseline is built with its trained cells' settings, and named by them."""
    variants = set(architectures.VARIANT_OPTIONS)
    return tuple((k, as_bool(flags[k]) if options.OPTIONS[k].kind == "bool" else flags[k])
                 for k in architectures.MODEL_SETTINGS
                 if k not in variants and k in flags
                 and not same_value(flags[k], options.OPTIONS[k].default))

  def eval_input(self, pretext: Mapping[str, Any], evaluation: Mapping[str, Any]
                 ) -> Dict[str, Any]:
    """The input that `evaluation` probes an export of `pretext` on, as evaluation flags
    (INPUT_FLAGS; as eval/linear_eval.evaluation_kwargs and eval_data take them): its
    eval_preprocessing, else the training spec without the pretext ops; the parameters of its
    own flags where it sets a size, else those of the pretext training."""
    spec = evaluation.get("eval_preprocessing") or specs.representation_spec(
        str(self.default(pretext, "preprocessing") or ""))
    source = evaluation if specs.sets_own_params(evaluation) else pretext
    return dict({k: source[k] for k in specs.EVAL_PARAM_FLAGS if k in source},
                eval_preprocessing=spec)

  def same_input(self, a: Mapping[str, Any], b: Mapping[str, Any],
                 deterministic: bool = False) -> bool:
    """Whether two inputs are the same: the same spec and the same values (unset ones at their
    defaults) of the parameters its ops read; `deterministic`: for evaluations that see the
    deterministic pass only, the specs as that pass runs them (specs.deterministic_spec)."""
    def spec(flags):
      text = str(self.default(flags, "eval_preprocessing") or "")
      gray = float(self.default(flags, "grayscale_probability"))
      return specs.deterministic_spec(text, gray) if deterministic else text

    return spec(a) == spec(b) and all(same_value(self.default(a, k), self.default(b, k))
                                      for k in specs.params_read(spec(a)))

  def deterministic_only(self, evaluation: Mapping[str, Any]) -> bool:
    """Whether an evaluation sees every image through the deterministic pass (is_training=False):
    the cached probes and CKA do; fine-tuning and the on-the-fly probes pass their training
    images through the training preprocessing."""
    task = str(self.default(evaluation, "task"))
    return task != "fine_tune" and not as_bool(self.default(evaluation, "on_the_fly"))

  def evaluation(self, entry: Any, where: str, required_name: bool = False
                 ) -> Tuple[str, Dict[str, Any]]:
    """(name, flags) of an evaluation table: flagfile < [defaults] < its flags."""
    entry = dict(self.table(entry, where))
    name = entry.pop("name", None)
    if name is None and required_name:
      self.fail(where, "no name: each evaluation needs one, e.g. name = \"imagenet_linear\"")
    name = DEFAULT_EVALUATION if name is None else name
    reserved = ("pretext", "report", files.REPLACED_DIR, SLURM_DIR) + files.RUN_DIRS
    if not isinstance(name, str) or not name or sanitize(name) != name or name in reserved:
      self.fail(where, f"name = {name!r}: a directory name of letters, digits, '.', '_', '+', "
                f"'=' (not {', '.join(reserved)})")
    flagfile = entry.pop("flagfile", None)
    patch_flagfile = entry.pop("patch_flagfile", None)
    flags = {}
    if flagfile is not None:
      flags = self.read_flagfile(str(flagfile), f"{where} flagfile")
    self.eval_flagfiles[name] = dict(flags)
    given = {**self.defaults, **self.flags(entry, where)}
    self.eval_given[name] = given
    flags.update(given)
    flags.setdefault("task", "linear_eval")
    if flags["task"] not in options.EVALUATION_TASKS:
      self.fail(where, f"task = {flags['task']!r}: an evaluation runs one of "
                f"{', '.join(options.EVALUATION_TASKS)}")
    if patch_flagfile is not None:
      from_file = self.read_flagfile(str(patch_flagfile), f"{where} patch_flagfile")
      patch_flags = dict(from_file, **given)
      patch_flags.setdefault("task", "linear_eval")
      spec = str(self.default(patch_flags, "eval_preprocessing") or "")
      if patch_flags["task"] != flags["task"] or not specs.makes_patches(spec):
        self.fail(where, f"patch_flagfile {patch_flagfile}: the flagfile of the same evaluation "
                  f"(task {flags['task']}) for exports that take patches, so its "
                  f"eval_preprocessing cuts them ({specs.PATCH_OP}); it has task "
                  f"{patch_flags['task']} and eval_preprocessing {spec!r}")
      self.eval_patches[name] = (from_file, patch_flags)
    return name, flags

  def expand(self, entry: Any, index: int, ctx) -> List[Cell]:
    where = f"[[cells]] #{index}"
    entry = self.table(entry, where)
    method = entry.get("method")
    if method is not None:
      where += f" (method {method!r})"
    self.check_keys(entry, CELL_KEYS, where)
    axes = dict(self.table(entry.get("axes", {}), f"{where}, axes"))
    if "method" in axes and method is not None:
      self.fail(where, "give method either as the key 'method' or in axes, not both")
    if method is None and "method" not in axes:
      self.fail(where, "no method: set method = \"rotation\" (or a list of methods)")
    if method is not None:
      axes = {"method": method, **axes}
    for key, values in axes.items():
      if not isinstance(values, list):
        values = [values] if key == "method" else values
        axes[key] = values
      if not isinstance(values, list) or not values:
        self.fail(f"{where}, axes", f"{key} = {values!r}: an axis is a non-empty list of values")
      if key != "method":
        self.check_flag(key, f"{where}, axes")
        axes[key] = [self.check_value(key, flag_value(v, f"{self.path}: {where}, axes: {key}"),
                                      f"{where}, axes") for v in values]
      elif not all(isinstance(m, str) and m for m in values):
        self.fail(where, f"method = {values!r}: methods are names like \"rotation\"")
    flags = self.flags(entry.get("flags", {}), f"{where}, flags", RUNNER_FLAGS + ("task",))
    eval_flags = self.flags(entry.get("eval_flags", {}), f"{where}, eval_flags",
                            RUNNER_FLAGS + ("task",))
    excludes = entry.get("exclude", [])
    if not isinstance(excludes, list):
      self.fail(where, f"exclude = {excludes!r}: a list of tables, e.g. "
                "[{ architecture = \"vgg19\", filters_factor = 2 }]")
    excludes = [self.table(e, f"{where}, exclude") for e in excludes]
    for e in excludes:
      for key in e:
        if key not in axes and key not in flags:
          self.fail(f"{where}, exclude", f"{key!r} is neither an axis nor a flag of this entry; "
                    f"axes: {', '.join(axes)}")
    tag = entry.get("tag")
    if tag is not None and not (isinstance(tag, str) and tag):
      self.fail(where, f"tag = {tag!r}: a non-empty string")
    flagfile = entry.get("flagfile")
    if flagfile is not None and not isinstance(flagfile, str):
      self.fail(where, f"flagfile = {flagfile!r}: a path")
    slurm = slurm_settings.job_settings(ctx["slurm"], slurm_settings.parse(
        entry.get("slurm", {}), f"{where}, slurm"))
    names = list(axes)
    cells = []
    for values in itertools.product(*(axes[k] for k in names)):
      point = dict(zip(names, values))
      if any(all(same_value(point.get(k, flags.get(k)), v) for k, v in e.items())
             for e in excludes):
        continue
      method_name = point.pop("method")
      cell_where = where
      if len(axes["method"]) > 1:
        cell_where = f"[[cells]] #{index} (method {method_name!r})"
      cell_flags = dict(flags, **point)
      if method_name == RANDOM_INIT:
        cell = self.make_cell(RANDOM_INIT, None, {}, point, dict(eval_flags, **cell_flags), tag,
                              cell_where, ctx)
      else:
        cell = self.make_cell(method_name, flagfile or ctx["flagfile"], cell_flags, point,
                              eval_flags, tag, cell_where, ctx)
      cell.slurm = dict(slurm)
      cells.append(cell)
    if not cells:
      self.fail(where, "every combination of the axes is excluded")
    return cells

  def smoke_evaluation(self, flags: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """smoke_flags of an evaluation step: fine-tuning keeps its training split (its labelled
    fraction is drawn from it), the probes take its first images."""
    fine_tune = self.default(flags, "task") == "fine_tune"
    smoke = self.smoke_flags(flags, SMOKE_FINE_TUNE if fine_tune else SMOKE_PROBE, where)
    if smoke and not fine_tune:
      for name, count in SMOKE_PROBE_SETTINGS.items():
        values = self.default(flags, name)
        values = str(values).split(",") if isinstance(values, str) else list(values)
        smoke[name] = ",".join(str(v) for v in values[:count])
    return smoke

  def make_cell(self, method: str, flagfile: Optional[str], flags: Mapping[str, Any],
                point: Mapping[str, Any], eval_flags: Mapping[str, Any], tag: Optional[str],
                where: str, ctx, scale_width: bool = True) -> Cell:
    """One cell: its effective flags (flagfile < defaults < [pretext] < flags), its name.
    `scale_width`: a smoke run's width from the cell's (baselines take their cells' as made)."""
    if method == RANDOM_INIT:
      first = dict(next(iter(ctx["evaluations"].values())), **eval_flags)
      arch, mode, width = self.identity(first, where)
      if scale_width:
        width = self.smoke_width(arch, width)
      evaluations, flagfiles, smoke = {}, {}, {}
      for eval_name, base in ctx["evaluations"].items():
        spec = eval_flags.get("eval_preprocessing", base.get("eval_preprocessing"))
        flagfiles[eval_name], base = self.evaluation_base(
            eval_name, base, specs.makes_patches(str(spec or "")))
        smoke[eval_name] = self.smoke_evaluation(self.fit_schedule(
            flagfiles[eval_name], dict(base, **eval_flags),
            {**self.eval_given[eval_name], **eval_flags}, where), where)
        evals = dict(base, **eval_flags, **smoke[eval_name])
        evals["architecture"] = arch
        if width is not None:
          evals["filters_factor"] = str(width)
        evals.update(architectures.variant_flags(arch, mode))
        if "eval_preprocessing" not in evals:
          self.fail(where, "the random-init baseline has no export to take the preprocessing "
                    "from: set eval_preprocessing (and resize_size ...) in "
                    "[baselines] random_init_flags or the cell's flags")
        evaluations[eval_name] = evals
      for eval_name, flags in evaluations.items():
        self.fit_schedule(flagfiles[eval_name], flags,
                          {**self.eval_given[eval_name], **eval_flags, **smoke[eval_name]}, where)
      extra = [(k, v) for k, v in point.items() if k not in IDENTITY_OPTIONS]
      name = cell_name(RANDOM_INIT, arch, mode, width, extra, tag)
      return Cell(name=name, kind=RANDOM_INIT, method=RANDOM_INIT, architecture=arch, mode=mode,
                  width=width, pretext_flags=None, evaluations=evaluations, origin=where,
                  axes=dict(point))
    dataset = ctx["defaults"].get("dataset")
    if flagfile == DEFAULT_FLAGFILE and str(dataset).startswith(options.FOLDER_PREFIX):
      dataset = FOLDER_FLAGFILE_DATASET
    try:
      path = flagfile.format(method=method, dataset=dataset if dataset is not None else "{dataset}")
    except (KeyError, IndexError, ValueError):
      self.fail(where, f"flagfile = {flagfile!r}: only {{method}} and {{dataset}} may be "
                "filled in")
    if "{dataset}" in path:
      self.fail(where, f"flagfile {flagfile!r} needs the dataset: set dataset in [defaults] or "
                "give the cell a flagfile")
    from_file = self.read_flagfile(path, where)
    given = {**ctx["defaults"], **ctx["pretext"], **flags}
    if self.smoke:  # The full run's schedule (the cell's epochs), scaled to the smoke epoch.
      merged = self.fit_schedule(from_file, dict(from_file, **given), given, where)
      arch, _, width = self.identity(merged, where)
      if scale_width and width is not None:
        given["filters_factor"] = str(self.smoke_width(arch, width))
      given.update(self.smoke_flags(merged, SMOKE_PRETEXT, where))
    pretext = self.fit_schedule(from_file, dict(from_file, **given), given, where)
    pretext.setdefault("task", method)
    pretext.setdefault("run_eval", True)
    if pretext["task"] in options.EVALUATION_TASKS:
      self.fail(where, f"flagfile {path} is an evaluation flagfile (task={pretext['task']}); a "
                "cell's flagfile is a pretext method's")
    arch, mode, width = self.identity(pretext, where)
    extra = [(k, v) for k, v in point.items() if k not in IDENTITY_OPTIONS]
    name = cell_name(method, arch, mode, width, extra, tag)
    kind = SUPERVISED if pretext["task"] == "supervised" else PRETEXT
    patches = specs.makes_patches(str(self.default(pretext, "preprocessing") or ""))
    evaluations = {}
    for n, base in ctx["evaluations"].items():
      flagfile_flags, base = self.evaluation_base(n, base, patches)
      full = self.fit_schedule(flagfile_flags, {**base, **eval_flags},
                               {**self.eval_given[n], **eval_flags}, where)
      extra = dict(eval_flags, **self.smoke_evaluation(full, where))
      evaluations[n] = self.fit_schedule(flagfile_flags, {**base, **extra},
                                         {**self.eval_given[n], **extra}, where)
    series = [n for n, e in evaluations.items() if e.get("task") == "probe_series"]
    if series and not (pretext.get("eval_every_epochs") or pretext.get("eval_at_steps")):
      self.fail(where, f"evaluation {series[0]!r} (task = \"probe_series\") probes the "
                "checkpoints that pretext training keeps: set eval_every_epochs (or "
                "eval_at_steps) in [pretext] or the cell's flags")
    return Cell(name=name, kind=kind, method=method, architecture=arch, mode=mode, width=width,
                pretext_flags=pretext, evaluations=evaluations, origin=where, axes=dict(point))

  def check_unique(self, cells: Sequence[Cell]):
    seen: Dict[str, Cell] = {}
    for c in cells:
      if c.name in seen:
        other = seen[c.name]
        if other.origin == c.origin:
          where, msg = c.origin, "two combinations of its axes"
        else:
          where, msg = c.origin, f"this entry and {other.origin}"
        self.fail(where, f"{msg} give the same cell name {c.name!r}; make them differ (an axis "
                  "value, a different method) or set tag = \"...\" on one entry")
      seen[c.name] = c


def _identity_flags(arch: str, mode: Optional[str], width: Optional[int]) -> Dict[str, str]:
  flags = dict(architecture=arch, **architectures.variant_flags(arch, mode))
  if width is not None:
    flags["filters_factor"] = str(width)
  return flags


def load_grid(path: str, known: Optional[Mapping[str, FlagInfo]] = None,
              base_dir: str = REPO_ROOT, overrides: Optional[Mapping[str, Any]] = None,
              smoke: bool = False) -> Grid:
  """Parses and expands a grid file. `known`: train_and_eval.py's flags (None: not checked);
  `overrides`: flags over [defaults] (e.g. data_dir from the command line); `smoke`: its smoke
  run (SMOKE_PRETEXT ...)."""
  try:
    data = files.read_toml(path, "grid file")
  except ValueError as e:
    raise GridError(str(e)) from None
  parser = _Parser(path, data, known, base_dir, overrides or {}, smoke)
  if smoke:
    # The grid's narrowest width of each architecture, from the grid as it runs in full.
    full = _Parser(path, data, known, base_dir, overrides or {}).parse()
    for cell in full.cells:
      if cell.width is not None:
        parser.narrowest[cell.architecture] = min(
            cell.width, parser.narrowest.get(cell.architecture, cell.width))
  return parser.parse()
