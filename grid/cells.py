"""Cells: one experiment of a grid each (pretext training + export, then its evaluations), named
from their settings; a Grid is the list of them; selecting cells by name, method, architecture."""

import dataclasses
import fnmatch
import hashlib
import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core import options
from core.options import RANDOM_INIT
from grid.common import GridError

# Kinds of cells: a self-supervised pretext method, the supervised reference, the random-init
# baseline (evaluation only).
PRETEXT, SUPERVISED = "pretext", "supervised"
KINDS = (PRETEXT, SUPERVISED, RANDOM_INIT)


@dataclasses.dataclass
class Cell:
  """One experiment of a grid: pretext training + export (unless random-init), then evaluation."""
  name: str
  kind: str                                  # pretext, supervised, random_init
  method: str
  architecture: str
  mode: Optional[str]                        # The variant (ResNet mode, ViT patch size) or None
  width: Optional[int]                       # filters_factor
  pretext_flags: Optional[Dict[str, Any]]    # None for random-init cells
  evaluations: Dict[str, Dict[str, Any]]     # evaluation name -> its flags
  origin: str                                # where in the grid file it comes from
  axes: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # What its SLURM job asks for (grid/slurm_settings.py: [slurm] < the entry's slurm table);
  # it does not change results, so it is not part of the fingerprints.
  slurm: Dict[str, Any] = dataclasses.field(default_factory=dict)
  # The random-init cell on the same input that the report compares it with (trained cells of
  # a grid with [baselines] random_init); not part of the fingerprints either.
  baseline: Optional[str] = None

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
    """A digest of each step's settings, without those that do not change its results (paths,
    logging: core/options.py): what 'the same cell' means."""
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
                pretext_flags=self.pretext_flags, evaluations=self.evaluations,
                slurm=dict(self.slurm), baseline=self.baseline)


def _digest(flags: Mapping[str, Any]) -> str:
  text = json.dumps(sorted((k, v) for k, v in flags.items() if k not in options.NON_RESULT),
                    default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass
class Grid:
  path: str
  name: str
  description: str
  cells: List[Cell]
  # The grid-wide SLURM settings (max_queued, max_retries; grid/slurm_settings.py).
  slurm: Dict[str, Any] = dataclasses.field(default_factory=dict)

  def cell(self, name: str) -> Cell:
    for c in self.cells:
      if c.name == name:
        return c
    raise GridError(f"{self.path}: no cell {name!r}; cells: {', '.join(self.names())}")

  def names(self) -> List[str]:
    return [c.name for c in self.cells]


def sanitize(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9._+=]+", "_", text).strip("_") or "_"


def _name_part(key: str, value: Any) -> str:
  if isinstance(value, bool):
    return key if value else f"no{key}"
  return sanitize(f"{key}{value}")


def cell_name(method: str, architecture: str, mode: Optional[str], width: Optional[int],
              extra: Sequence[Tuple[str, Any]] = (), tag: Optional[str] = None) -> str:
  """`<method>-<architecture>[_<mode>]-w<width>[-<axis><value>...][-<tag>]`."""
  arch = f"{architecture}_{mode}" if mode else architecture
  parts = [sanitize(method), sanitize(arch), f"w{width}" if width is not None else "wdefault"]
  parts += [_name_part(k, v) for k, v in extra]
  if tag:
    parts.append(sanitize(tag))
  return "-".join(parts)


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
