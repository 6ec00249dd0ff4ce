"""What the grid knows of train_and_eval.py's flags: their names, types and choices (from its
--helpxml), TOML values as flag values, command lines, and absl flagfiles."""

import dataclasses
import difflib
import glob
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
import xml.etree.ElementTree as ET

from grid.common import GridError, REPO_ROOT, TRAIN_AND_EVAL

# Flags the runner sets itself.
RUNNER_FLAGS = ("workdir", "hub_module", "flagfile")


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
      parsed = as_bool(value)
      if parsed is None:
        raise GridError(f"{path}:{number}: --{name}={value}: a boolean flag takes true or false")
      value = parsed
    flags.pop(name, None)  # A later setting wins and moves to the end.
    flags[name] = value
  return flags


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
