"""Durations, ETA and progress lines of a grid run."""

import re
import threading
import time
from typing import Dict, List, Optional, Sequence

from core.options import RANDOM_INIT
from grid.cells import Cell

_ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+\] ")


def is_progress(line: str) -> bool:
  """Whether a line of a step's output is one of its progress lines (train_and_eval.py's)."""
  return line.startswith("step ") or line.startswith("epoch ") or "ETA" in line


def shown(line: str, width: int = 120) -> str:
  """A step's output line without absl's prefix, cut to `width`."""
  return _ABSL_PREFIX.sub("", line).strip()[:width]


def _duration_key(cell: Cell) -> str:
  """Cells that take about as long: evaluation-only ones, trained ones."""
  return RANDOM_INIT if cell.kind == RANDOM_INIT else "trained"


class Progress:
  """How long cells took, which are still to finish and since when they run: the ETA.

  Safe to use from several threads.
  """

  def __init__(self):
    self._durations: Dict[str, List[float]] = {}
    self._unfinished: List[Cell] = []
    self._started: Dict[str, float] = {}
    self._lock = threading.Lock()

  def add_duration(self, cell: Cell, seconds: Optional[float]) -> None:
    """A finished cell's wall time (also of an earlier run: it seeds the ETA)."""
    if isinstance(seconds, (int, float)) and seconds > 0:
      with self._lock:
        self._durations.setdefault(_duration_key(cell), []).append(float(seconds))

  def expect(self, cells: Sequence[Cell]) -> None:
    """The cells still to finish."""
    with self._lock:
      self._unfinished = list(cells)

  def started(self, cell: Cell, at: Optional[float] = None) -> None:
    with self._lock:
      self._started[cell.name] = time.time() if at is None else at

  def finished(self, cell: Cell, seconds: Optional[float] = None) -> None:
    """`cell` ended; `seconds`: its wall time, where it succeeded."""
    with self._lock:
      if cell in self._unfinished:
        self._unfinished.remove(cell)
    self.add_duration(cell, seconds)

  def _estimate(self, cell: Cell) -> Optional[float]:
    same = self._durations.get(_duration_key(cell))
    if same:
      return sum(same) / len(same)
    every = [d for ds in self._durations.values() for d in ds]
    return sum(every) / len(every) if every else None

  def eta(self, slots: int) -> Optional[float]:
    """Seconds until the unfinished cells are done: their estimates less the time the running
    ones have had, spread over `slots` cells at a time; None before any cell has a duration
    to go by."""
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
    return sum(left) / max(1, min(slots, len(remaining)))
