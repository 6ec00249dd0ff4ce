"""Durations as people read them in progress lines, status files and reports."""

from typing import Optional


def format_duration(seconds: Optional[float], unknown: str = "?",
                    hours_with_seconds: bool = True) -> str:
  """`1h02m03s` (or `1h02m` without the seconds), `2m03s`, `3s`; `unknown` for None."""
  if seconds is None:
    return unknown
  seconds = int(round(max(seconds, 0)))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  if h:
    return f"{h}h{m:02d}m{s:02d}s" if hours_with_seconds else f"{h}h{m:02d}m"
  return f"{m}m{s:02d}s" if m else f"{s}s"
