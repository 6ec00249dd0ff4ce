"""Stopping a run on a signal without losing its work: SIGINT (Ctrl-C), SIGTERM (kill, SLURM's
scancel, preemption and time limit), SIGUSR1 and SIGUSR2 (a time-limit warning asked for with
sbatch --signal; submitit's is SIGUSR2).

An entry point holds a `StopOnSignal` for its whole run. Inside `saving()` (a training loop that
has made progress) the first signal only asks to stop: the loop saves a checkpoint at the step it
is at and raises `Interrupted`, which the entry point turns into one line. Elsewhere the first
signal ends the process at once, with that line: no exception is raised into whatever the
process is doing (TensorFlow's tracing, say), and every file the suite writes is written whole
or not at all (checkpoints, exports and result files are renamed into place), so nothing is
left half-written. A second SIGINT exits at once; further SIGTERM, SIGUSR1 or SIGUSR2 while
stopping are ignored, since schedulers and the grid runner send them on their own (SIGTERM
after a time-limit signal) and escalate to SIGKILL when they must. The process exits with
`exit_code(signal)`, 128 + the signal's number, as a shell reports a death by that signal.

Free of TensorFlow: the grid runner reads these exit codes.
"""

import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def exit_code(signum: int) -> int:
  """The exit status of a run stopped by `signum`."""
  return 128 + int(signum)


def stopped_by_signal(code: Optional[int]) -> bool:
  """Whether a step's exit status says it was stopped from outside (its work kept for a
  resume) or killed by a signal (a negative status from subprocess), rather than failing."""
  if code is None:
    return False
  return code < 0 or code - 128 in [int(s) for s in SIGNALS]


def signal_name(signum: int) -> str:
  try:
    return signal.Signals(signum).name
  except ValueError:
    return f"signal {signum}"


class Interrupted(BaseException):  # Like KeyboardInterrupt: not caught by `except Exception`.
  """The run stopped on a signal; `detail` says what was kept (e.g. the checkpoint's step)."""

  def __init__(self, signum: int, detail: str = ""):
    self.signum = int(signum)
    self.detail = detail
    super().__init__(f"interrupted by {signal_name(signum)}" + (f" {detail}" if detail else ""))


class StopOnSignal:
  """The signal handlers of one run (module docstring). Use as a context manager in the main
  thread; `requested` is the signal that asked to stop, or None. `exit_line(signum)`: the line
  printed (to stderr) when a signal ends the process outside `saving()`."""

  def __init__(self, exit_line: Callable[[int], str] = lambda signum: (
      f"interrupted by {signal_name(signum)}"), signals=SIGNALS):
    self.signals = tuple(signals)
    self.exit_line = exit_line
    self.requested: Optional[int] = None
    self._saving = 0
    self._previous = {}

  def __enter__(self) -> "StopOnSignal":
    self.install()
    return self

  def install(self) -> None:
    """(Re)installs the handlers: TensorFlow's multi-worker runtime sets a SIGTERM handler of
    its own (its preemption notifier) when the strategy is made, which this takes back."""
    if threading.current_thread() is threading.main_thread():
      for signum in self.signals:
        previous = signal.signal(signum, self._handle)
        self._previous.setdefault(signum, previous)

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  @contextlib.contextmanager
  def saving(self):
    """Within: a first signal only sets `requested`; the code inside polls it, saves its state
    and raises `Interrupted` itself. One that came after its last poll is raised on leaving."""
    self._saving += 1
    try:
      yield self
    finally:
      self._saving -= 1
    self.check()

  def check(self, detail: str = "") -> None:
    """Raises `Interrupted` where a signal asked to stop."""
    if self.requested is not None:
      raise Interrupted(self.requested, detail)

  def _handle(self, signum, frame) -> None:
    del frame
    if self.requested is not None:
      if signum == signal.SIGINT:
        _say(f"\n{signal_name(signum)} again: exiting at once, without saving")
        os._exit(exit_code(signum))  # pylint: disable=protected-access
      return  # Stopping already.
    self.requested = signum
    if not self._saving:
      try:  # The handler may have interrupted a write to either stream.
        sys.stdout.flush()
        line = self.exit_line(signum)
      except Exception:  # pylint: disable=broad-except
        line = f"interrupted by {signal_name(signum)}"
      _say(line)
      os._exit(exit_code(signum))  # pylint: disable=protected-access
    _say(f"{signal_name(signum)}: saving a checkpoint at the current step, then stopping (Ctrl-C "
         "again to exit at once, without saving)")


def _say(line: str) -> None:
  """A line to stderr from a signal handler: straight to the file descriptor, since the handler
  may have interrupted a write to sys.stderr (which is not reentrant)."""
  os.write(2, (line + "\n").encode())
