"""The files that runs and grids leave, by name; writing them so that a crash never leaves a
half-written one, and reading them back."""

import datetime
import hashlib
import json
import os
import tempfile
import tomllib
from typing import Any, Dict, Optional, Sequence

# A pretext workdir: its config, its pretext evaluation, its export (with the export's info).
CONFIG_FILE = "config.json"
PRETEXT_RESULTS_FILE = "pretext_results.json"
EXPORT_DIR = "export"
EXPORT_INFO_FILE = "export_info.json"
# Probes over training: the checkpoints kept for them (never rotated away) and their exports,
# <workdir>/exports/step_<N>; the series of probes that --task=probe_series writes beside its
# results.json, with one folder of results per checkpoint (step_<N>/results.json).
KEPT_CHECKPOINTS_DIR = "kept_checkpoints"
SERIES_EXPORTS_DIR = "exports"
SERIES_FILE = "series.json"
# The folders a pretext run leaves in its workdir (no evaluation may be named as one of them).
RUN_DIRS = ("checkpoints", "train", EXPORT_DIR, KEPT_CHECKPOINTS_DIR, SERIES_EXPORTS_DIR)
# What a pretext run leaves that holds its training (a workdir without any of them has trained
# nothing that another run's settings could be mistaken for).
TRAINED_OUTPUTS = ("checkpoints", EXPORT_DIR, KEPT_CHECKPOINTS_DIR, SERIES_EXPORTS_DIR,
                   PRETEXT_RESULTS_FILE)
# Where outputs made with other settings are moved rather than reused or overwritten:
# <folder>/replaced/<UTC time>/ (train_and_eval.py --restart, an evaluation of another config or
# export, a grid cell whose settings changed). Nothing reads results from there.
REPLACED_DIR = "replaced"
# An evaluation's workdir: the per-layer probes' or fine-tuning's results; a layer similarity's.
RESULTS_FILE = "results.json"
# An evaluation's features on disk while it runs (--feature_cache=workdir or keep).
FEATURE_CACHE_DIR = "feature_cache"
CKA_FILE = "cka.json"
# A grid root: its status file; in each cell's folder, the cell's record and its steps' output.
STATUS_FILE = "grid_status.json"
CELL_FILE = "cell.json"
LOG_FILE = "log.txt"


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_text_atomic(path: str, text: str) -> str:
  """Writes `text` to a temporary file beside `path`, syncs it, then renames it over `path`.

  An existing file at `path` is replaced only once the new content is completely on disk.
  """
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are for everyone to read.
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json_atomic(path: str, data: Any, **json_kwargs) -> str:
  """`data` as indented JSON, written with `write_text_atomic`; `json_kwargs` go to json.dumps."""
  return write_text_atomic(path, json.dumps(data, indent=2, **json_kwargs) + "\n")


def read_toml(path: str, what: str) -> Dict[str, Any]:
  """The TOML document at `path` (a grid file, an adapter: `what`); ValueError saying why it
  cannot be read or parsed."""
  try:
    with open(path, "rb") as f:
      return tomllib.load(f)
  except OSError as e:
    raise ValueError(f"cannot read {what} {path}: {e.strerror}") from None
  except tomllib.TOMLDecodeError as e:
    raise ValueError(f"{path}: not valid TOML: {e}") from None


def read_json(path: str) -> Optional[Any]:
  """The JSON in `path`, or None where it is missing or unreadable (e.g. from an older crash)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_export_info(export_dir: str, missing_ok: bool = False) -> Dict[str, Any]:
  """An export's export_info.json: FileNotFoundError where it has none (`missing_ok`: {}),
  ValueError where it is not JSON."""
  path = os.path.join(export_dir, EXPORT_INFO_FILE)
  if not os.path.exists(path):
    if missing_ok:
      return {}
    raise FileNotFoundError(f"{export_dir} has no {EXPORT_INFO_FILE}; is it an export of this "
                            "suite?")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path!r} is not valid JSON: {e}") from None


def move_aside(folder: str, names: Optional[Sequence[str]] = None) -> Optional[str]:
  """Moves the entries `names` of `folder` (None: all but REPLACED_DIR) that exist into
  <folder>/replaced/<UTC time>/, keeping their names; returns that folder, or None where there
  was nothing to move. Renames only: nothing is copied or deleted."""
  if not os.path.isdir(folder):
    return None
  present = sorted(n for n in (os.listdir(folder) if names is None else names)
                   if n != REPLACED_DIR and os.path.lexists(os.path.join(folder, n)))
  if not present:
    return None
  stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
  base = dest = os.path.join(folder, REPLACED_DIR, stamp)
  count = 1
  while os.path.exists(dest):
    count += 1
    dest = f"{base}-{count}"
  os.makedirs(dest)
  for name in present:
    os.rename(os.path.join(folder, name), os.path.join(dest, name))
  return dest


def export_fingerprint(export_dir: str) -> Optional[str]:
  """What identifies an export's content: a digest of its variables' index (which holds a
  checksum of every tensor, so any other weights change it), its export_info.json without the
  run record, and, for a SavedModel made elsewhere (no export_info.json), its graph. The same
  for a copy of the export anywhere; None where there is no export. Evaluation results and
  caches record it, so that they are reused only for the export they measured."""
  if not os.path.exists(os.path.join(export_dir, "saved_model.pb")):
    return None
  digest = hashlib.sha256()
  index = os.path.join(export_dir, "variables", "variables.index")
  if os.path.exists(index):
    with open(index, "rb") as f:
      digest.update(f.read())
  info = read_json(os.path.join(export_dir, EXPORT_INFO_FILE))
  if isinstance(info, dict):
    info.pop("run", None)
    digest.update(json.dumps(info, sort_keys=True, default=str).encode())
  else:
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()[:16]


def evaluation_file(task: str) -> str:
  """The file that an evaluation task (core/options.EVALUATION_TASKS) leaves in its workdir."""
  return CKA_FILE if task == "cka" else RESULTS_FILE


def step_dir_name(step: int) -> str:
  """The folder of one checkpoint's export (and of its probes): step_<N>, N zero-padded so that
  names sort by step."""
  return f"step_{int(step):08d}"
