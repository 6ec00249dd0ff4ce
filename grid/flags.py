"""What the grid knows of train_and_eval.py's flags (core/options.py, in this process): their
names, kinds, defaults and choices; TOML values as flag values; absl flagfiles; the checks of a
grid file's flags."""

import dataclasses
import difflib
import glob
import os
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from absl import flags as absl_flags

from core import options
from grid.common import GridError, REPO_ROOT

# Flags the runner sets itself.
RUNNER_FLAGS = ("workdir", "hub_module", "flagfile")


@dataclasses.dataclass(frozen=True)
class FlagInfo:
  """What the grid needs to know of one train_and_eval.py flag."""
  type: str                                  # bool, int, float, string, enum, list
  default: Any = None
  choices: Optional[Tuple[str, ...]] = None


def known_flags() -> Dict[str, FlagInfo]:
  """The flags train_and_eval.py accepts (its options, aliases included)."""
  known = {name: FlagInfo(o.kind, o.default, o.choices) for name, o in options.OPTIONS.items()}
  known.update({alias: known[name] for alias, name in options.ALIASES.items()})
  return known


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


def same_value(a: Any, b: Any) -> bool:
  if isinstance(a, bool) or isinstance(b, bool):
    return as_bool(a) == as_bool(b)
  if str(a) == str(b):
    return True
  try:
    return float(a) == float(b)
  except (TypeError, ValueError):
    return False


def as_bool(value: Any) -> Optional[bool]:
  if isinstance(value, bool):
    return value
  return {"true": True, "1": True, "false": False, "0": False}.get(str(value).lower())


def read_flagfile(path: str, known: Optional[Mapping[str, FlagInfo]] = None,
                  base_dir: str = REPO_ROOT) -> Dict[str, Any]:
  """The flags of an absl flagfile, read as absl reads it (one flag a line, # and // comments,
  nested --flagfile=...), in order, a later setting winning; booleans as bools."""
  full = path if os.path.isabs(path) else os.path.join(base_dir, path)
  if not os.path.isfile(full):
    raise GridError(f"cannot read flagfile {path}: no such file")
  try:
    args = absl_flags.FlagValues().read_flags_from_files([f"--flagfile={full}"])
  except absl_flags.Error as e:
    raise GridError(f"cannot read flagfile {path}: {e}") from None
  flags = {}
  for arg in args:
    name, eq, value = arg[2:].partition("=")
    if not arg.startswith("--") or not name or " " in name:
      raise GridError(f"{path}:{_line_of(full, arg)}: {arg!r} is not a flag; write --name=value")
    info = (known or {}).get(name)
    if not eq:
      negated = (known is None and name.startswith("no") and len(name) > 2) or (
          known is not None and info is None and name.startswith("no") and
          known.get(name[2:], FlagInfo("")).type == "bool")
      name, value = (name[2:], False) if negated else (name, True)
    elif info is not None and info.type == "bool":
      value = as_bool(value)
      if value is None:
        raise GridError(f"{path}:{_line_of(full, arg)}: {arg}: a boolean flag takes true or "
                        "false")
    flags.pop(name, None)  # A later setting wins and moves to the end.
    flags[name] = value
  return flags


def _line_of(path: str, text: str) -> str:
  """The number of the line of `path` that holds `text` ('?' where a nested flagfile does)."""
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if line.strip() == text:
        return str(number)
  return "?"


class FlagChecker:
  """Checks the flag names and values of one grid file against train_and_eval.py's flags
  (`known`; None: names and values are taken as they are); every error names the file and the
  place in it."""

  def __init__(self, path: str, known: Optional[Mapping[str, FlagInfo]], base_dir: str):
    self.path, self.known, self.base_dir = path, known, base_dir

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
      parsed = as_bool(value)
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
            os.path.basename(os.path.dirname(p)) for p in glob.glob(
                os.path.join(self.base_dir, "configs", "*", f"{match.group(2)}.flags"))
            if os.path.basename(os.path.dirname(p)) not in ("evaluation", "grids"))
        hint = (f"; methods with a flagfile configs/<method>/{match.group(2)}.flags: "
                f"{', '.join(methods) or 'none'}. Give the cells a flagfile ([pretext] "
                "flagfile = \"configs/{method}/shapes.flags\", or a cell's flagfile); an image "
                "folder (dataset \"folder:<root>\") takes configs/<method>/shapes.flags")
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
