"""<root>/grid_status.json: every cell's state (pending, running, done, failed, interrupted),
its errors and, under SLURM, its jobs; written atomically under a lock, merged with what other
runners of the same root wrote.

  {"format_version": 1, "grid": {"name", "file"}, "root", "updated", "running": [cell names],
   "summary": {"total": N, "<status>": count, ...},
   "cells": {name: {"status", "kind", "method", "architecture", "mode", "width", "workdir",
                    "log", "wall_s", "error", "failed_step", "exit_code", "log_tail", ...,
                    "executor", "job_id", "job_state", "attempts": [...] (SLURM)}}}
"""

import fcntl
import os
import threading
from typing import Any, Dict

from core import files
from core.files import LOG_FILE, STATUS_FILE
from grid.cells import Cell
from grid.common import now

# Fields of a failure, dropped when the cell runs again or is done.
FAILURE_FIELDS = ("exit_code", "failed_step", "error", "log_tail")


def read(root: str) -> Dict[str, Any]:
  """The status file of `root` (empty where there is none yet)."""
  return files.read_json(os.path.join(root, STATUS_FILE)) or {}


class StatusFile:
  """The status of the cells one runner works on, over what is on disk.

  `set` changes a cell's entry in memory; `write` merges the entries this runner touched into
  the file on disk (another runner of the same root, e.g. another --cells subset, keeps its
  own) and writes it atomically. Safe to use from several threads.
  """

  def __init__(self, root: str, grid_name: str = "", grid_path: str = ""):
    self.root = os.path.abspath(root)
    self.grid_name, self.grid_path = grid_name, grid_path
    self.data = read(self.root)
    self.data.setdefault("cells", {})
    self._touched = set()
    self.lock = threading.RLock()

  @property
  def path(self) -> str:
    return os.path.join(self.root, STATUS_FILE)

  def entry(self, name: str) -> Dict[str, Any]:
    """A cell's entry as last read or set ({} if it has none)."""
    return self.data["cells"].get(name, {})

  def set(self, cell: Cell, **fields) -> Dict[str, Any]:
    """Updates a cell's entry (a None value removes the field); returns the entry."""
    with self.lock:
      self._touched.add(cell.name)
      entry = self.data["cells"].setdefault(cell.name, {})
      if fields.get("status") in ("done", "running"):
        for key in FAILURE_FIELDS:
          entry.pop(key, None)
      workdir = os.path.join(self.root, cell.name)
      entry.update(kind=cell.kind, method=cell.method, architecture=cell.architecture,
                   mode=cell.mode, width=cell.width, workdir=workdir,
                   log=os.path.join(workdir, LOG_FILE))
      for key, value in fields.items():
        if value is None:
          entry.pop(key, None)
        else:
          entry[key] = value
      return entry

  def write(self) -> None:
    """Writes grid_status.json atomically, merged with the entries of other runners of the
    same root."""
    os.makedirs(self.root, exist_ok=True)
    with self.lock, open(os.path.join(self.root, f".{STATUS_FILE}.lock"), "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      on_disk = read(self.root).get("cells") or {}
      cells = dict(on_disk, **{n: self.data["cells"][n] for n in self._touched})
      self.data["cells"] = cells
      counts: Dict[str, int] = {}
      for entry in cells.values():
        counts[entry["status"]] = counts.get(entry["status"], 0) + 1
      running = sorted(n for n in self._touched if cells[n]["status"] == "running")
      self.data.update(format_version=1, grid=dict(name=self.grid_name, file=self.grid_path),
                       root=self.root, updated=now(), running=running,
                       summary=dict(total=len(cells), **counts))
      files.write_json_atomic(self.path, self.data, default=str)
