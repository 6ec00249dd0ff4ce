"""Grids of experiments: grid files, cell naming, and the runner that trains and evaluates cells.

A grid file (TOML, plain data; configs/grids/*.toml) names cells. Each cell is one pretext
training + export (train_and_eval.py --run_eval) followed by the per-layer evaluation of that
export (train_and_eval.py --task=linear_eval --hub_module=<cell>/export); a random-init baseline
cell is the evaluation alone (--hub_module=random_init). Every step runs as a subprocess, its
output appended to <root>/<cell>/log.txt; <root>/grid_status.json records every cell's state.

Grid file sections (all optional but [[cells]]):
  [grid]        name, description.
  [defaults]    flags of every step of every cell (dataset, data_dir, ...).
  [pretext]     flags of every pretext training, over the method's flagfile; flagfile: the
                default flagfile of the cells (default "configs/{method}/{dataset}.flags").
  [evaluation]  the per-layer evaluation of every cell: flagfile (an evaluation flagfile), name
                (default "linear_eval": results go to <cell>/<name>/results.json), flags.
  [[evaluations]] instead of [evaluation]: several evaluations of every cell, each as above with
                its own name (e.g. one on ImageNet, one on Places).
  [baselines]   random_init (bool), random_init_flags (table), supervised (bool),
                supervised_flagfile, supervised_flags (table).
  [[cells]]     method (a name, or a list: an axis), flagfile (default: [pretext]'s), flags
                (table), axes (table of lists, expanded as a product), exclude (list of tables),
                eval_flags (table, over every evaluation's flags), tag (name suffix).
Precedence, lowest first: flagfile, [defaults], [pretext] or [evaluation], the cell's flags or
eval_flags, its axis values. method = "random_init" makes evaluation-only baseline cells.
"""

import dataclasses
import datetime
import difflib
import fcntl
import fnmatch
import hashlib
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import tomllib
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
import xml.etree.ElementTree as ET

from core import files
from core import specs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_AND_EVAL = os.path.join(REPO_ROOT, "train_and_eval.py")
STATUS_FILE = "grid_status.json"
CELL_FILE = "cell.json"
LOG_FILE = "log.txt"
RESULTS_FILE = "results.json"
PRETEXT_RESULTS_FILE = "pretext_results.json"
RANDOM_INIT = "random_init"
DEFAULT_FLAGFILE = "configs/{method}/{dataset}.flags"

# Kinds of cells: a self-supervised pretext method, the supervised reference, the random-init
# baseline (evaluation only).
PRETEXT, SUPERVISED = "pretext", "supervised"
KINDS = (PRETEXT, SUPERVISED, RANDOM_INIT)

# Standard widths (train_and_eval.py --filters_factor default) and flag defaults, used for cell
# names when the flag help of train_and_eval.py is not at hand.
DEFAULT_WIDTHS = {"resnet50": 4, "revnet50": 4, "vgg19": 8}
FALLBACK_DEFAULTS = {"architecture": "resnet50", "mode": "v2"}
# Flags the runner sets itself.
RUNNER_FLAGS = ("workdir", "hub_module", "flagfile")
# Flags that do not change a step's results: a cell differing only in these is the same cell
# (e.g. the same root moved to a machine with its data elsewhere).
NON_RESULT_FLAGS = ("data_dir", "dataset_dir", "log_every_steps", "save_checkpoints_secs",
                    "save_checkpoints_steps", "keep_checkpoint_max", "feature_cache_dir", "force",
                    "eval_batch_size")

SECTIONS = ("grid", "defaults", "pretext", "evaluation", "evaluations", "baselines", "cells")
GRID_KEYS = ("name", "description")
DEFAULT_EVALUATION = "linear_eval"
BASELINE_KEYS = ("random_init", "random_init_flags", "supervised", "supervised_flagfile",
                 "supervised_flags")
# The flags that shape a patch input (for the random-init baseline on patches).
PATCH_INPUT_FLAGS = ("eval_preprocessing", "resize_size", "crop_size", "smaller_size",
                     "splits_per_side", "patch_jitter", "grayscale_probability")
CELL_KEYS = ("method", "flagfile", "flags", "axes", "exclude", "eval_flags", "tag")


class GridError(ValueError):
  """A grid file or a cell selection is invalid; the message names the file, the cell, the key."""


@dataclasses.dataclass(frozen=True)
class FlagInfo:
  """What the grid needs to know of one train_and_eval.py flag."""
  type: str                                  # bool, int, float, string, enum, list, ...
  default: Optional[str] = None
  choices: Optional[Tuple[str, ...]] = None  # enum flags


def flag_info_from_helpxml(xml_text: str) -> Dict[str, FlagInfo]:
  """The flags described by `train_and_eval.py --helpxml`."""
  root = ET.fromstring(xml_text)
  flags = {}
  for flag in root.iter("flag"):
    name = flag.findtext("name")
    if not name:
      continue
    choices = tuple(e.text or "" for e in flag.findall("enum_value")) or None
    flags[name] = FlagInfo(type=flag.findtext("type") or "string",
                           default=flag.findtext("default"), choices=choices)
  return flags


def known_flags(python: str = sys.executable, script: str = TRAIN_AND_EVAL,
                timeout: float = 120) -> Dict[str, FlagInfo]:
  """The flags train_and_eval.py accepts, from its --helpxml (it imports only absl at start)."""
  proc = subprocess.run([python, script, "--helpxml"], capture_output=True, text=True,
                        timeout=timeout, cwd=REPO_ROOT)
  if "<flag>" not in proc.stdout:  # absl exits 1 after the help.
    raise RuntimeError(f"{script} --helpxml failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip()[-500:]}")
  return flag_info_from_helpxml(proc.stdout)


# ----------------------------------------------------------------------------------- flag values
def flag_value(value: Any, where: str) -> Any:
  """A TOML value as a flag value: bools stay bools, lists become comma-joined strings."""
  if isinstance(value, bool):
    return value
  if isinstance(value, (int, float)):
    return repr(value) if isinstance(value, float) else str(value)
  if isinstance(value, str):
    return value
  if isinstance(value, list) and all(isinstance(v, (str, int, float)) and
                                     not isinstance(v, bool) for v in value):
    return ",".join(flag_value(v, where) for v in value)
  raise GridError(f"{where}: {value!r} is not a flag value; use a string, number, boolean or a "
                  "list of strings/numbers")


def flags_to_args(flags: Mapping[str, Any]) -> List[str]:
  """Command-line arguments: --name=value, --name / --noname for booleans."""
  args = []
  for name, value in flags.items():
    if value is True:
      args.append(f"--{name}")
    elif value is False:
      args.append(f"--no{name}")
    else:
      args.append(f"--{name}={value}")
  return args


def _same_value(a: Any, b: Any) -> bool:
  if isinstance(a, bool) or isinstance(b, bool):
    return _as_bool(a) == _as_bool(b)
  if str(a) == str(b):
    return True
  try:
    return float(a) == float(b)
  except (TypeError, ValueError):
    return False


def _as_bool(value: Any) -> Optional[bool]:
  if isinstance(value, bool):
    return value
  return {"true": True, "1": True, "false": False, "0": False}.get(str(value).lower())


def read_flagfile(path: str, known: Optional[Mapping[str, FlagInfo]] = None,
                  base_dir: str = REPO_ROOT, _seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
  """The flags of an absl flagfile (one --name=value, --name or --noname a line; # comments;
  nested --flagfile=...), in order; booleans as bools."""
  full = path if os.path.isabs(path) else os.path.join(base_dir, path)
  if full in _seen:
    raise GridError(f"flagfile {path} includes itself (through {' -> '.join(_seen)})")
  try:
    with open(full) as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise GridError(f"cannot read flagfile {path}: {e.strerror}") from None
  flags = {}
  for number, raw in enumerate(lines, 1):
    line = raw.strip()
    if not line or line.startswith("#") or line.startswith("//"):
      continue
    if not line.startswith("--") or (" " in line.split("=", 1)[0]):
      raise GridError(f"{path}:{number}: {line!r} is not a flag; write --name=value")
    name, eq, value = line[2:].partition("=")
    if name == "flagfile":
      flags.update(read_flagfile(value, known, base_dir, _seen + (full,)))
      continue
    if not eq:
      if known is not None and name not in known and name.startswith("no") and \
          known.get(name[2:], FlagInfo("")).type == "bool":
        name, value = name[2:], False
      elif known is None and name.startswith("no") and len(name) > 2:
        name, value = name[2:], False
      else:
        value = True
    elif known is not None and known.get(name, FlagInfo("")).type == "bool":
      parsed = _as_bool(value)
      if parsed is None:
        raise GridError(f"{path}:{number}: --{name}={value}: a boolean flag takes true or false")
      value = parsed
    flags.pop(name, None)  # A later setting wins and moves to the end.
    flags[name] = value
  return flags


# ------------------------------------------------------------------------------------------ cells
@dataclasses.dataclass
class Cell:
  """One experiment of a grid: pretext training + export (unless random-init), then evaluation."""
  name: str
  kind: str                                  # pretext, supervised, random_init
  method: str
  architecture: str
  mode: Optional[str]                        # None where the architecture has no versions
  width: Optional[int]                       # filters_factor
  pretext_flags: Optional[Dict[str, Any]]    # None for random-init cells
  evaluations: Dict[str, Dict[str, Any]]     # evaluation name -> its flags
  origin: str                                # where in the grid file it comes from
  axes: Dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def reference(self) -> bool:
    return self.kind != PRETEXT

  @property
  def eval_flags(self) -> Dict[str, Any]:
    """The flags of the (first) evaluation."""
    return next(iter(self.evaluations.values()))

  def steps(self, workdir: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(step, flags incl. the runner's) in order: pretext (unless random-init), then
    eval:<name> per evaluation, whose results go to <workdir>/<name>/results.json."""
    steps = []
    if self.pretext_flags is not None:
      steps.append(("pretext", dict(self.pretext_flags, workdir=workdir)))
    hub = os.path.join(workdir, "export") if self.pretext_flags is not None else RANDOM_INIT
    for name, flags in self.evaluations.items():
      steps.append((f"eval:{name}", dict(flags, hub_module=hub,
                                         workdir=os.path.join(workdir, name))))
    return steps

  def fingerprints(self) -> Dict[str, str]:
    """A digest of each step's settings (without paths): what 'the same cell' means."""
    out = {}
    if self.pretext_flags is not None:
      out["pretext"] = _digest(self.pretext_flags)
    for name, flags in self.evaluations.items():
      out[f"eval:{name}"] = _digest(dict(flags, pretext=out.get("pretext")))
    return out

  def to_dict(self) -> Dict[str, Any]:
    return dict(name=self.name, kind=self.kind, method=self.method,
                architecture=self.architecture, mode=self.mode, width=self.width,
                origin=self.origin, axes=dict(self.axes),
                pretext_flags=self.pretext_flags, evaluations=self.evaluations)


def _digest(flags: Mapping[str, Any]) -> str:
  text = json.dumps(sorted((k, v) for k, v in flags.items() if k not in NON_RESULT_FLAGS),
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Grid:
  path: str
  name: str
  description: str
  cells: List[Cell]

  def cell(self, name: str) -> Cell:
    for c in self.cells:
      if c.name == name:
        return c
    raise GridError(f"{self.path}: no cell {name!r}; cells: {', '.join(self.names())}")

  def names(self) -> List[str]:
    return [c.name for c in self.cells]


def _sanitize(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+=]+", "_", text).strip("_") or "_"


def _name_part(key: str, value: Any) -> str:
  if isinstance(value, bool):
    return key if value else f"no{key}"
  return _sanitize(f"{key}{value}")


def cell_name(method: str, architecture: str, mode: Optional[str], width: Optional[int],
              extra: Sequence[Tuple[str, Any]] = (), tag: Optional[str] = None) -> str:
  """`<method>-<architecture>[_<mode>]-w<width>[-<axis><value>...][-<tag>]`."""
  arch = f"{architecture}_{mode}" if mode else architecture
  parts = [_sanitize(method), _sanitize(arch), f"w{width}" if width is not None else "wdefault"]
  parts += [_name_part(k, v) for k, v in extra]
  if tag:
    parts.append(_sanitize(tag))
  return "-".join(parts)


def _has_modes(architecture: str) -> bool:
  """Whether --mode (v1/v2) changes the architecture: ResNets; RevNet and VGG ignore it."""
  return architecture.startswith("resnet")


class _Parser:
  """Turns a parsed TOML grid into cells; every error names the file, the cell and the key."""

  def __init__(self, path: str, data: Mapping[str, Any], known: Optional[Mapping[str, FlagInfo]],
               base_dir: str, overrides: Mapping[str, Any]):
    self.path, self.data, self.known, self.base_dir = path, data, known, base_dir
    self.overrides = dict(overrides)

  def fail(self, where: str, message: str):
    raise GridError(f"{self.path}: {where}: {message}")

  def table(self, value: Any, where: str) -> Dict[str, Any]:
    if not isinstance(value, dict):
      self.fail(where, f"expected a table (e.g. {{ epochs = 1 }}), got {value!r}")
    return value

  def check_keys(self, table: Mapping[str, Any], valid: Sequence[str], where: str):
    for key in table:
      if key not in valid:
        hint = difflib.get_close_matches(key, valid, n=1)
        self.fail(where, f"unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                                   else "") + f"; valid keys: {', '.join(valid)}")

  def flags(self, table: Any, where: str, reserved: Sequence[str] = RUNNER_FLAGS
            ) -> Dict[str, Any]:
    """A table of flag overrides, checked against train_and_eval.py's flags."""
    out = {}
    for name, value in self.table(table, where).items():
      self.check_flag(name, where, reserved)
      out[name] = self.check_value(name, flag_value(value, f"{self.path}: {where}: {name}"),
                                   where)
    return out

  def check_flag(self, name: str, where: str, reserved: Sequence[str] = RUNNER_FLAGS):
    if name in reserved:
      self.fail(where, f"flag {name!r} is set by the grid runner, not the grid file")
    if self.known is not None and name not in self.known:
      hint = difflib.get_close_matches(name, list(self.known), n=1)
      self.fail(where, f"unknown flag {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint
                                                   else "") +
                "; `python train_and_eval.py --helpfull` lists the flags")

  def check_value(self, name: str, value: Any, where: str) -> Any:
    info = self.known.get(name) if self.known is not None else None
    if info is None:
      return value
    if info.type == "bool":
      parsed = _as_bool(value)
      if parsed is None:
        self.fail(where, f"{name} = {value!r}: a boolean flag takes true or false")
      return parsed
    if isinstance(value, bool):
      self.fail(where, f"{name} = {value}: not a boolean flag ({info.type})")
    if info.choices and value not in info.choices:
      self.fail(where, f"{name} = {value!r} is not valid; choices: {', '.join(info.choices)}")
    if info.type in ("int", "float"):
      try:
        (int if info.type == "int" else float)(value)
      except ValueError:
        self.fail(where, f"{name} = {value!r} is not a{'n' if info.type == 'int' else ''} "
                  f"{info.type}")
    return value

  def read_flagfile(self, path: str, where: str) -> Dict[str, Any]:
    full = path if os.path.isabs(path) else os.path.join(self.base_dir, path)
    if not os.path.exists(full):
      hint = ""
      match = re.match(r"^configs/([^/]+)/([^/]+)\.flags$", path)
      if match:
        methods = sorted(
            os.path.basename(os.path.dirname(p)) for p in _glob(
                os.path.join(self.base_dir, "configs", "*", f"{match.group(2)}.flags"))
            if os.path.basename(os.path.dirname(p)) not in ("evaluation", "grids"))
        hint = (f"; methods with a flagfile configs/<method>/{match.group(2)}.flags: "
                f"{', '.join(methods) or 'none'}")
      self.fail(where, f"flagfile {path} not found (relative paths are relative to "
                f"{self.base_dir}){hint}")
    try:
      flags = read_flagfile(path, self.known, self.base_dir)
    except GridError as e:
      self.fail(where, str(e))
    for name, value in flags.items():
      self.check_flag(name, f"{where}, flagfile {path}", reserved=("workdir", "hub_module"))
      flags[name] = self.check_value(name, value, f"{where}, flagfile {path}")
    return flags

  def default(self, flags: Mapping[str, Any], name: str) -> Any:
    if name in flags:
      return flags[name]
    if self.known is not None and name in self.known and self.known[name].default is not None:
      return self.known[name].default
    return FALLBACK_DEFAULTS.get(name)

  def identity(self, flags: Mapping[str, Any], where: str):
    """(architecture, mode or None, width) of a cell's effective flags."""
    arch = str(self.default(flags, "architecture"))
    mode = str(self.default(flags, "mode")) if _has_modes(arch) else None
    width = flags.get("filters_factor")
    try:
      width = int(width) if width is not None else DEFAULT_WIDTHS.get(arch)
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
    entries = data.get("cells")
    if not isinstance(entries, list) or not entries:
      self.fail("top level", "no [[cells]]: add at least one, e.g.\n  [[cells]]\n  method = "
                "\"rotation\"\n  axes = { architecture = [\"resnet50\", \"vgg19\"] }")

    ctx = dict(defaults=defaults, pretext=pretext, evaluations=evaluations,
               flagfile=default_flagfile)
    cells: List[Cell] = []
    for index, entry in enumerate(entries, 1):
      cells.extend(self.expand(entry, index, ctx))
    explicit = {c.name for c in cells}
    trained = [c for c in cells if c.pretext_flags is not None]
    identities = []
    patch_inputs: List[Tuple[Tuple[str, Optional[str], Optional[int]], Dict[str, Any]]] = []
    for c in trained:
      ident = (c.architecture, c.mode, c.width)
      if ident not in identities:
        identities.append(ident)
      try:
        patch_flags = _patch_input_flags(c.pretext_flags)
      except ValueError as e:  # A malformed --preprocessing.
        self.fail(c.origin, str(e))
      if patch_flags is not None and (ident, patch_flags) not in patch_inputs:
        patch_inputs.append((ident, patch_flags))
    if baselines.get("supervised"):
      where = "[baselines] supervised"
      flagfile = str(baselines.get("supervised_flagfile", default_flagfile))
      extra = self.flags(baselines.get("supervised_flags", {}), f"{where}_flags")
      for arch, mode, width in identities:
        overrides = dict(extra, **_identity_flags(arch, mode, width))
        cell = self.make_cell("supervised", flagfile, overrides, {}, {}, None, where, ctx)
        if cell.name not in explicit:
          cells.append(cell)
          explicit.add(cell.name)
    if baselines.get("random_init"):
      where = "[baselines] random_init"
      extra = self.flags(baselines.get("random_init_flags", {}), f"{where}_flags")
      for arch, mode, width in identities:
        overrides = dict(extra, **_identity_flags(arch, mode, width))
        cell = self.make_cell(RANDOM_INIT, None, {}, {}, overrides, None, where, ctx)
        if cell.name not in explicit:
          cells.append(cell)
          explicit.add(cell.name)
      # Patch methods are probed on patches: their baseline is a random backbone on the same
      # patches (tag "patches"; "patches2"... where an architecture has several patch settings).
      shared = {k: v for k, v in extra.items() if k not in PATCH_INPUT_FLAGS}
      tags: Dict[Tuple[str, Optional[str], Optional[int]], int] = {}
      for ident, patch_flags in patch_inputs:
        tags[ident] = tags.get(ident, 0) + 1
        tag = "patches" if tags[ident] == 1 else f"patches{tags[ident]}"
        overrides = dict(shared, **patch_flags, **_identity_flags(*ident))
        cell = self.make_cell(RANDOM_INIT, None, {}, {}, overrides, tag, where, ctx)
        if cell.name not in explicit:
          cells.append(cell)
          explicit.add(cell.name)
    self.check_unique(cells)
    return Grid(path=self.path, name=name, description=str(info.get("description", "")),
                cells=cells)

  def evaluation(self, entry: Any, where: str, required_name: bool = False
                 ) -> Tuple[str, Dict[str, Any]]:
    """(name, flags) of an evaluation table: flagfile < [defaults] < its flags."""
    entry = dict(self.table(entry, where))
    name = entry.pop("name", None)
    if name is None and required_name:
      self.fail(where, "no name: each evaluation needs one, e.g. name = \"imagenet_linear\"")
    name = DEFAULT_EVALUATION if name is None else name
    if not isinstance(name, str) or not name or _sanitize(name) != name or name in (
        "pretext", "export", "checkpoints", "train", "report"):
      self.fail(where, f"name = {name!r}: a directory name of letters, digits, '.', '_', '+', "
                "'=' (not pretext, export, checkpoints, train or report)")
    flagfile = entry.pop("flagfile", None)
    flags = {}
    if flagfile is not None:
      flags = self.read_flagfile(str(flagfile), f"{where} flagfile")
    flags.update(self.defaults)
    flags.update(self.flags(entry, where))
    flags.setdefault("task", "linear_eval")
    if flags["task"] != "linear_eval":
      self.fail(where, f"task = {flags['task']!r}: an evaluation runs task=linear_eval")
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
    names = list(axes)
    cells = []
    for values in itertools.product(*(axes[k] for k in names)):
      point = dict(zip(names, values))
      if any(all(_same_value(point.get(k, flags.get(k)), v) for k, v in e.items())
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
      cells.append(cell)
    if not cells:
      self.fail(where, "every combination of the axes is excluded")
    return cells

  def make_cell(self, method: str, flagfile: Optional[str], flags: Mapping[str, Any],
                point: Mapping[str, Any], eval_flags: Mapping[str, Any], tag: Optional[str],
                where: str, ctx) -> Cell:
    """One cell: its effective flags (flagfile < defaults < [pretext] < flags), its name."""
    if method == RANDOM_INIT:
      first = dict(next(iter(ctx["evaluations"].values())), **eval_flags)
      arch, mode, width = self.identity(first, where)
      evaluations = {}
      for eval_name, base in ctx["evaluations"].items():
        evals = dict(base, **eval_flags)
        evals["architecture"] = arch
        if width is not None:
          evals["filters_factor"] = str(width)
        if mode:
          evals["mode"] = mode
        if "eval_preprocessing" not in evals:
          self.fail(where, "the random-init baseline has no export to take the preprocessing "
                    "from: set eval_preprocessing (and resize_size ...) in "
                    "[baselines] random_init_flags or the cell's flags")
        evaluations[eval_name] = evals
      extra = [(k, v) for k, v in point.items() if k not in ("architecture", "mode",
                                                            "filters_factor")]
      name = cell_name(RANDOM_INIT, arch, mode, width, extra, tag)
      return Cell(name=name, kind=RANDOM_INIT, method=RANDOM_INIT, architecture=arch, mode=mode,
                  width=width, pretext_flags=None, evaluations=evaluations, origin=where,
                  axes=dict(point))
    dataset = ctx["defaults"].get("dataset")
    try:
      path = flagfile.format(method=method, dataset=dataset if dataset is not None else "{dataset}")
    except (KeyError, IndexError, ValueError):
      self.fail(where, f"flagfile = {flagfile!r}: only {{method}} and {{dataset}} may be "
                "filled in")
    if "{dataset}" in path:
      self.fail(where, f"flagfile {flagfile!r} needs the dataset: set dataset in [defaults] or "
                "give the cell a flagfile")
    pretext = self.read_flagfile(path, where)
    pretext.update(ctx["defaults"])
    pretext.update(ctx["pretext"])
    pretext.update(flags)
    pretext.setdefault("task", method)
    pretext.setdefault("run_eval", True)
    if pretext["task"] == "linear_eval":
      self.fail(where, f"flagfile {path} is an evaluation flagfile (task=linear_eval); a cell's "
                "flagfile is a pretext method's")
    arch, mode, width = self.identity(pretext, where)
    extra = [(k, v) for k, v in point.items() if k not in ("architecture", "mode",
                                                          "filters_factor")]
    name = cell_name(method, arch, mode, width, extra, tag)
    kind = SUPERVISED if pretext["task"] == "supervised" else PRETEXT
    evaluations = {n: dict(base, **eval_flags) for n, base in ctx["evaluations"].items()}
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


def _patch_input_flags(pretext_flags: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
  """The evaluation flags that give a random-init backbone the patches a patch method's export
  is probed on, or None where the method does not train on patches (no `crop_patches`). The
  export's evaluation preprocessing is its training spec without label-making ops, and patch
  methods make their labels in model_fn, so the spec is taken as it is."""
  spec = str(pretext_flags.get("preprocessing", ""))
  if not specs.makes_patches(spec):
    return None
  flags = {k: pretext_flags[k] for k in PATCH_INPUT_FLAGS if k in pretext_flags}
  flags["eval_preprocessing"] = spec
  return flags


def _identity_flags(arch: str, mode: Optional[str], width: Optional[int]) -> Dict[str, str]:
  flags = dict(architecture=arch)
  if width is not None:
    flags["filters_factor"] = str(width)
  if mode:
    flags["mode"] = mode
  return flags


def _glob(pattern: str) -> List[str]:
  import glob  # pylint: disable=g-import-not-at-top
  return glob.glob(pattern)


def load_grid(path: str, known: Optional[Mapping[str, FlagInfo]] = None,
              base_dir: str = REPO_ROOT, overrides: Optional[Mapping[str, Any]] = None) -> Grid:
  """Parses and expands a grid file. `known`: train_and_eval.py's flags (None: not checked);
  `overrides`: flags over [defaults] (e.g. data_dir from the command line)."""
  try:
    with open(path, "rb") as f:
      data = tomllib.load(f)
  except OSError as e:
    raise GridError(f"cannot read grid file {path}: {e.strerror}") from None
  except tomllib.TOMLDecodeError as e:
    raise GridError(f"{path}: not valid TOML: {e}") from None
  return _Parser(path, data, known, base_dir, overrides or {}).parse()


def select_cells(grid: Grid, patterns: Sequence[str] = (), methods: Sequence[str] = (),
                 architectures: Sequence[str] = (), kinds: Sequence[str] = ()) -> List[Cell]:
  """The cells matching any of `patterns` (names or globs) and the method/architecture/kind lists;
  empty lists select all. A pattern or value that matches nothing is an error."""
  cells = list(grid.cells)
  names = grid.names()
  for pattern in patterns:
    if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
      raise GridError(f"--cells: {pattern!r} matches no cell of {grid.path}; cells: "
                      f"{', '.join(names)}")
  if patterns:
    cells = [c for c in cells if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
  for flag, values, attr in (("--only_method", methods, "method"),
                             ("--only_architecture", architectures, "architecture"),
                             ("--only_kind", kinds, "kind")):
    valid = sorted({getattr(c, attr) for c in grid.cells})
    for value in values:
      if value not in valid:
        raise GridError(f"{flag}: {value!r} is not in {grid.path}; choices: {', '.join(valid)}")
    if values:
      cells = [c for c in cells if getattr(c, attr) in values]
  return cells


# ---------------------------------------------------------------------------------- cell state
def write_json_atomic(path: str, data: Any) -> None:
  """Writes JSON atomically; values JSON does not know are written as strings."""
  files.write_json_atomic(path, data, default=str)


def _results_match(results: Mapping[str, Any], eval_flags: Mapping[str, Any]) -> bool:
  """Whether a results.json's config agrees with the evaluation flags it shares fields with."""
  config = results.get("config") or {}
  for name, value in eval_flags.items():
    if name in ("task", "workdir", "hub_module") + NON_RESULT_FLAGS or name not in config:
      continue
    have = config[name]
    if isinstance(have, (list, tuple)):
      have = ",".join(str(v) for v in have)
      try:
        if [float(v) for v in str(value).split(",") if v] == \
            [float(v) for v in have.split(",") if v]:
          continue
      except ValueError:
        pass
    if have is None or isinstance(have, dict):
      continue
    if not _same_value(have, value):
      return False
  return True


def step_done(cell: Cell, workdir: str, step: str, state: Mapping[str, Any]) -> bool:
  """Whether `step` of `cell` finished earlier with the same settings and its files are there."""
  recorded = (state.get("steps") or {}).get(step) or {}
  if not recorded.get("done") or recorded.get("fingerprint") != cell.fingerprints()[step]:
    return False
  if step == "pretext":
    if not os.path.exists(os.path.join(workdir, "export", "saved_model.pb")):
      return False
    return not cell.pretext_flags.get("run_eval") or os.path.exists(
        os.path.join(workdir, PRETEXT_RESULTS_FILE))
  name = step.split(":", 1)[1]
  results = files.read_json(os.path.join(workdir, name, RESULTS_FILE))
  return bool(results) and "layers" in results and _results_match(results,
                                                                  cell.evaluations[name])


def cell_done(cell: Cell, workdir: str) -> bool:
  state = files.read_json(os.path.join(workdir, CELL_FILE)) or {}
  return all(step_done(cell, workdir, step, state) for step, _ in cell.steps(workdir))


def _fmt_duration(seconds: Optional[float]) -> str:
  if seconds is None:
    return "?"
  seconds = int(round(max(seconds, 0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _error_line(lines: Sequence[str]) -> str:
  """The most telling line of a failed step's output: `error: ...`, or a traceback's last line."""
  for line in reversed(lines):
    if line.startswith("error:") or re.match(r"^[A-Za-z_.]*(Error|Exception)\b", line):
      return line.strip()
  for line in reversed(lines):
    if line.strip():
      return line.strip()
  return "(no output)"


# ---------------------------------------------------------------------------------------- runner
class GridRunner:
  """Runs cells, each step a subprocess; records state in the grid root.

  `command`: the program prefix of each step (default: this Python and train_and_eval.py).
  `jobs`: how many cells run at once. With more than one, each step's TensorFlow gets
  cpu_count // jobs threads (TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS, unless `env`
  sets them): on a small CPU machine two single-threaded cells do more work per second than one
  cell on two threads, and their start-up, tracing and export overlap.
  """

  def __init__(self, root: str, grid_name: str = "", grid_path: str = "",
               command: Optional[Sequence[str]] = None, print_fn: Callable[[str], None] = print,
               stream_logs: bool = False, fail_fast: bool = False, progress_every_s: float = 30,
               tty: Optional[bool] = None, env: Optional[Mapping[str, str]] = None,
               tail_lines: int = 30, jobs: int = 1):
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
      raise ValueError(f"jobs must be a positive integer, got {jobs!r}")
    self.root = os.path.abspath(root)
    self.grid_name, self.grid_path = grid_name, grid_path
    self.command = list(command or [sys.executable, TRAIN_AND_EVAL])
    self.print_fn = print_fn
    self.stream_logs, self.fail_fast = stream_logs, fail_fast
    self.progress_every_s = progress_every_s
    self.jobs = jobs
    # A status line rewritten in place only makes sense for one cell at a time.
    self.tty = (sys.stdout.isatty() if tty is None else tty) and jobs == 1
    self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    if jobs > 1:
      threads = str(max(1, (os.cpu_count() or 1) // jobs))
      for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        self.env.setdefault(name, threads)
    self.tail_lines = tail_lines
    self.status = files.read_json(os.path.join(self.root, STATUS_FILE)) or {}
    self.status.setdefault("cells", {})
    self._durations: Dict[str, List[float]] = {}
    self._touched = set()  # Cells whose status this runner writes.
    self._lock = threading.RLock()  # Guards the status, durations and ETA state across jobs.
    self._unfinished: List[Cell] = []
    self._started: Dict[str, float] = {}
    self._procs: set = set()  # Running steps, stopped together on an interrupt.
    self._stopping = False

  def workdir(self, cell: Cell) -> str:
    return os.path.join(self.root, cell.name)

  # Status file.
  def _write_status(self):
    """Writes grid_status.json atomically, merged with the entries of other runners of the
    same root (another --cells subset running beside this one)."""
    path = os.path.join(self.root, STATUS_FILE)
    os.makedirs(self.root, exist_ok=True)
    with self._lock, open(os.path.join(self.root, f".{STATUS_FILE}.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      on_disk = (files.read_json(path) or {}).get("cells") or {}
      cells = dict(on_disk, **{n: self.status["cells"][n] for n in self._touched})
      self.status["cells"] = cells
      counts: Dict[str, int] = {}
      for entry in cells.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
      running = sorted(n for n in self._touched if cells[n]["status"] == "running")
      self.status.update(format_version=1, grid=dict(name=self.grid_name, file=self.grid_path),
                         root=self.root, updated=_now(), running=running,
                         summary=dict(total=len(cells), **counts))
      write_json_atomic(path, self.status)

  def _set(self, cell: Cell, **fields):
    with self._lock:
      self._touched.add(cell.name)
      entry = self.status["cells"].setdefault(cell.name, {})
      for key in ("exit_code", "failed_step", "error", "log_tail"):
        if fields.get("status") in ("done", "running"):
          entry.pop(key, None)
      entry.update(kind=cell.kind, method=cell.method, architecture=cell.architecture,
                   mode=cell.mode, width=cell.width, workdir=self.workdir(cell),
                   log=os.path.join(self.workdir(cell), LOG_FILE), **fields)

  # Progress.
  def _estimate(self, cell: Cell) -> Optional[float]:
    same = self._durations.get(_duration_key(cell))
    if same:
      return sum(same) / len(same)
    every = [d for ds in self._durations.values() for d in ds]
    return sum(every) / len(every) if every else None

  def _eta(self) -> Optional[float]:
    """Seconds until the unfinished cells are done: their estimates less the time the running
    ones have had, spread over the jobs; None before any cell has a duration to go by."""
    with self._lock:
      remaining = list(self._unfinished)
      if not remaining:
        return 0.0
      estimates = [self._estimate(c) for c in remaining]
      if any(e is None for e in estimates):
        return None
      now = time.time()
      left = [max(e - (now - self._started.get(c.name, now)), 0.0)
              for c, e in zip(remaining, estimates)]
    return sum(left) / min(self.jobs, len(remaining))

  def run(self, cells: Sequence[Cell]) -> Dict[str, Dict[str, Any]]:
    """Runs (or skips) every cell; returns {name: status entry}. Failures do not stop the rest."""
    os.makedirs(self.root, exist_ok=True)
    start = time.time()
    todo = []
    for cell in cells:
      if cell_done(cell, self.workdir(cell)):
        previous = self.status["cells"].get(cell.name, {})
        state = files.read_json(os.path.join(self.workdir(cell), CELL_FILE)) or {}
        wall = previous.get("wall_s", state.get("wall_s"))
        self._set(cell, status="done", reused=True, wall_s=wall)
        if isinstance(state.get("wall_s"), (int, float)) and state["wall_s"] > 0:
          # Earlier runs' times seed the ETA.
          self._durations.setdefault(_duration_key(cell), []).append(float(state["wall_s"]))
      else:
        todo.append(cell)
        self._set(cell, status="pending")
    self._write_status()
    total = len(cells)
    done_before = total - len(todo)
    jobs = min(self.jobs, len(todo)) or 1
    self.print_fn(f"grid {self.grid_name or ''}: {total} cell(s) in {self.root}: "
                  f"{done_before} already done, {len(todo)} to run"
                  + (f", {jobs} at a time" if jobs > 1 else ""))
    self._unfinished = list(todo)
    counts = dict(finished=0, failed=0)
    queue = list(enumerate(todo))

    def next_cell():
      with self._lock:
        return queue.pop(0) if queue and not self._stopping else None

    def run_next() -> bool:
      """Runs the next cell of the queue; False when there is none or the grid must stop."""
      item = next_cell()
      if item is None:
        return False
      i, cell = item
      position = f"[{done_before + i + 1}/{total}]"
      eta = self._eta()
      with self._lock:
        self._started[cell.name] = time.time()
        self.print_fn(f"{position} {cell.name}: starting | done {done_before + counts['finished']}"
                      f"/{total}, failed {counts['failed']} | elapsed "
                      f"{_fmt_duration(time.time() - start)}, ETA {_fmt_duration(eta)}")
      try:
        entry = self.run_cell(cell, position, start)
      except KeyboardInterrupt:
        self._set(cell, status="interrupted", error="interrupted by the user")
        self._write_status()
        self.print_fn(f"{position} {cell.name}: interrupted; run the same command again to "
                      "resume")
        raise
      with self._lock:
        self._unfinished.remove(cell)
        if entry["status"] == "done":
          counts["finished"] += 1
          self._durations.setdefault(_duration_key(cell), []).append(entry["wall_s"])
          self.print_fn(f"{position} {cell.name}: done in {_fmt_duration(entry['wall_s'])}"
                        f"{self._best(cell)}")
          return True
        counts["failed"] += 1
        self.print_fn(f"{position} {cell.name}: FAILED in step {entry['failed_step']} "
                      f"(exit {entry['exit_code']}): {entry['error']}\n"
                      f"    log: {entry['log']}")
        if self.fail_fast:
          self.print_fn("stopping at the first failure (--fail_fast)")
          queue.clear()
          return False
        return True

    if jobs == 1:
      while run_next():
        pass
    else:
      self._run_parallel(run_next, jobs)
    self._write_status()
    finished, failed = counts["finished"], counts["failed"]
    self.print_fn(f"grid finished in {_fmt_duration(time.time() - start)}: "
                  f"{done_before + finished}/{total} done, {failed} failed"
                  + (f", {len(todo) - finished - failed} not run" if
                     len(todo) - finished - failed else ""))
    return {c.name: self.status["cells"][c.name] for c in cells}

  def _run_parallel(self, run_next: Callable[[], bool], jobs: int):
    """`jobs` threads take cells from the queue. An interrupt (in the main thread) stops every
    running step; each thread then records its cell as interrupted."""
    # Completion is signalled with events, not Thread.join: a KeyboardInterrupt that lands
    # inside join() can leave the thread looking finished while it still records its cell.
    finished = [threading.Event() for _ in range(jobs)]

    def worker(done: threading.Event):
      try:
        while run_next():
          pass
      except KeyboardInterrupt:
        pass  # Recorded by run_next; the main thread re-raises.
      finally:
        done.set()

    for i, done in enumerate(finished):
      threading.Thread(target=worker, args=(done,), name=f"grid-job-{i}", daemon=True).start()
    try:
      while not all(done.is_set() for done in finished):
        time.sleep(0.2)
    except KeyboardInterrupt:
      with self._lock:
        self._stopping = True
        procs = list(self._procs)
      for proc in procs:
        _stop(proc)
      for done in finished:
        done.wait()
      raise

  def _best(self, cell: Cell) -> str:
    results = files.read_json(os.path.join(self.workdir(cell), next(iter(cell.evaluations)),
                                           RESULTS_FILE)) or {}
    best = results.get("best_layer") or {}
    if best.get("name") and best.get("top1") is not None:
      return f" (best layer {best['name']}: top-1 {100 * best['top1']:.1f}%)"
    return ""

  def run_cell(self, cell: Cell, position: str = "", grid_start: Optional[float] = None
               ) -> Dict[str, Any]:
    """Runs the steps of one cell that are not done yet; returns its status entry."""
    workdir = self.workdir(cell)
    os.makedirs(workdir, exist_ok=True)
    state_path = os.path.join(workdir, CELL_FILE)
    state = files.read_json(state_path) or {}
    fingerprints = cell.fingerprints()
    state.update(cell.to_dict(), grid=dict(name=self.grid_name, file=self.grid_path))
    steps_state = state.setdefault("steps", {})
    cell_start = time.time()
    self._set(cell, status="running", started=_now(), reused=False)
    self._write_status()
    ran_pretext = False
    for step, flags in cell.steps(workdir):
      if step_done(cell, workdir, step, state):
        self._log(workdir, f"=== {_now()} step {step}: done earlier with the same settings; "
                  "skipped ===")
        continue
      previous = steps_state.get(step) or {}
      entry = dict(fingerprint=fingerprints[step], done=False, started=_now())
      if step.startswith("eval:"):
        # results.json of an earlier export must not be reused: linear_eval compares only the
        # evaluation config (the export path stays the same), so it is told to recompute.
        entry["force"] = bool(ran_pretext or (previous.get("force") and not previous.get("done"))
                              or previous.get("fingerprint") not in (None, fingerprints[step]))
        if entry["force"]:
          flags = dict(flags, force=True)
      ran_pretext = ran_pretext or step == "pretext"
      steps_state[step] = entry
      write_json_atomic(state_path, state)
      argv = self.command + flags_to_args(flags)
      cpu_before = _children_cpu_s()
      code, tail, seconds = self._run_step(cell, step, argv, workdir, position, grid_start)
      steps_state[step].update(done=code == 0, seconds=round(seconds, 1), exit_code=code,
                               finished=_now())
      if self.jobs == 1:  # The children's CPU time is this step's only when steps run alone.
        steps_state[step]["cpu_s"] = round(_children_cpu_s() - cpu_before, 1)
      write_json_atomic(state_path, state)
      if code != 0:
        error = _error_line(tail)
        if code < 0:
          error = f"killed by signal {-code}; {error}"
        self._set(cell, status="failed", failed_step=step, exit_code=code, error=error,
                  log_tail=tail[-self.tail_lines:], finished=_now(),
                  wall_s=round(time.time() - cell_start, 1))
        self._write_status()
        return self.status["cells"][cell.name]
    if not cell_done(cell, workdir):
      self._set(cell, status="failed", failed_step=cell.steps(workdir)[-1][0], exit_code=0,
                error=f"the steps succeeded but {RESULTS_FILE} (or the export) is missing or "
                "does not match the settings", log_tail=[], wall_s=round(time.time() -
                                                                        cell_start, 1))
      self._write_status()
      return self.status["cells"][cell.name]
    wall = sum(s.get("seconds", 0.0) for s in steps_state.values())
    state["wall_s"] = round(wall, 1)
    write_json_atomic(state_path, state)
    self._set(cell, status="done", finished=_now(), wall_s=round(time.time() - cell_start, 1),
              total_step_s=round(wall, 1))
    self._write_status()
    return self.status["cells"][cell.name]

  def _log(self, workdir: str, line: str):
    with open(os.path.join(workdir, LOG_FILE), "a") as f:
      f.write(line + "\n")

  def _run_step(self, cell: Cell, step: str, argv: List[str], workdir: str, position: str,
                grid_start: Optional[float]):
    """Runs one step, its output appended to log.txt; returns (exit code, last lines, seconds)."""
    label = ("pretext training + export" if step == "pretext" else
             f"per-layer evaluation {step.split(':', 1)[1]}")
    self.print_fn(f"{position} {cell.name}: {label}")
    tail: List[str] = []
    start = time.time()
    last_progress = 0.0
    with open(os.path.join(workdir, LOG_FILE), "a") as log:
      log.write(f"=== {_now()} step {step}: {' '.join(_quote(a) for a in argv)}\n")
      log.flush()
      with self._lock:
        if self._stopping:
          raise KeyboardInterrupt
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1, cwd=REPO_ROOT, env=self.env,
                                errors="replace")
        self._procs.add(proc)
      try:
        for line in proc.stdout:
          log.write(line)
          log.flush()
          line = line.rstrip("\n")
          tail.append(line)
          if len(tail) > 200:
            del tail[:100]
          if self.stream_logs:
            self.print_fn(f"  {cell.name} | {line}")
          elif _is_progress(line) and (self.tty or
                                       time.time() - last_progress >= self.progress_every_s):
            last_progress = time.time()
            eta = self._eta()
            shown = _ABSL_PREFIX.sub("", line).strip()[:120]
            text = (f"  {cell.name} {step} | {shown} | grid elapsed "
                    f"{_fmt_duration(time.time() - (grid_start or start))}, ETA "
                    f"{_fmt_duration(eta)}")
            if self.tty:
              sys.stdout.write("\r\033[K" + text[:200])
              sys.stdout.flush()
            else:
              self.print_fn(text)
        code = proc.wait()
        if self._stopping:  # Another job was interrupted and stopped this step.
          raise KeyboardInterrupt
      except BaseException:
        _stop(proc)
        log.write(f"=== {_now()} interrupted ===\n")
        raise
      finally:
        with self._lock:
          self._procs.discard(proc)
        if self.tty and not self.stream_logs:
          sys.stdout.write("\r\033[K")
          sys.stdout.flush()
      seconds = time.time() - start
      log.write(f"=== {_now()} step {step}: exit {code} after {seconds:.1f} s ===\n")
    return code, tail, seconds


_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+\] ")


def _duration_key(cell: Cell) -> str:
  """Cells that take about as long: evaluation-only ones, trained ones."""
  return RANDOM_INIT if cell.kind == RANDOM_INIT else "trained"


def _is_progress(line: str) -> bool:
  return line.startswith("step ") or line.startswith("epoch ") or "ETA" in line


def _children_cpu_s() -> float:
  """CPU seconds (user + system) of the finished child processes so far."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _stop(proc: subprocess.Popen):
  """Stops a step's process: SIGTERM, then SIGKILL after 10 s."""
  if proc.poll() is not None:
    return
  proc.terminate()
  try:
    proc.wait(timeout=10)
  except subprocess.TimeoutExpired:
    proc.kill()
    proc.wait()


def _quote(arg: str) -> str:
  import shlex  # pylint: disable=g-import-not-at-top
  return shlex.quote(arg)


def describe(cells: Sequence[Cell], root: str, show_commands: bool = False,
             command: Optional[Sequence[str]] = None) -> str:
  """The --list text: one line per cell (name, kind, state), optionally with its commands."""
  status = (files.read_json(os.path.join(root, STATUS_FILE)) or {}).get("cells", {})
  width = max([len(c.name) for c in cells] + [4])
  lines = [f"{'cell'.ljust(width)}  {'kind'.ljust(11)}  state"]
  for c in cells:
    workdir = os.path.join(os.path.abspath(root), c.name)
    if cell_done(c, workdir):
      state = "done"
    else:
      state = status.get(c.name, {}).get("status", "pending")
      if state == "done":  # Done with other settings: it would run again.
        state = "changed (will re-run)"
      if state == "failed":
        state += f" ({status[c.name].get('error', '')[:80]})"
    lines.append(f"{c.name.ljust(width)}  {c.kind.ljust(11)}  {state}")
    if show_commands:
      prefix = list(command or ["python", "train_and_eval.py"])
      for step, flags in c.steps(workdir):
        lines.append(f"    {step}: {' '.join(_quote(a) for a in prefix + flags_to_args(flags))}")
  return "\n".join(lines)
