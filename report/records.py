"""The report's run records: how each cell's numbers were made (training/run_record.py's "run"
field of pretext_results.json and results.json), and the cells of one table that were made with
different versions or devices."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from core.durations import format_duration
from report.cells import CellResult

# What must agree for two numbers to compare like for like (the commit and the command may
# differ: the settings are compared by the tables themselves).
VERSION_KEYS = ("python", "tensorflow", "keras", "tensorflow_datasets", "numpy")


def records_of(cell: CellResult) -> List[Tuple[str, Mapping[str, Any], Mapping[str, Any]]]:
  """(phase, run record, times) of the cell's pretext training and of this evaluation, where
  recorded."""
  out = []
  for phase, data in (("pretext", cell.pretext), (cell.evaluation_name or "evaluation",
                                                   cell.results)):
    run = (data or {}).get("run")
    if isinstance(run, dict):
      out.append((phase, run, (data or {}).get("times") or {}))
  return out


def device_text(run: Mapping[str, Any]) -> str:
  devices = run.get("devices") or {}
  if devices.get("accelerator"):
    names = sorted(set(devices.get("names") or []))
    return f"{devices.get('count')} x {devices['accelerator']} ({', '.join(names)})"
  text = f"CPU: {devices.get('cpu', '?')}, {devices.get('cpu_count', '?')} cores"
  simd = devices.get("cpu_simd")
  if simd is not None:  # Records made before it was recorded say nothing.
    text += f" ({', '.join(simd) or 'no AVX2'})"
  onednn = (run.get("environment") or {}).get("TF_ENABLE_ONEDNN_OPTS")
  if onednn is not None:  # Records made before it was recorded say nothing.
    text += ", oneDNN " + ("off" if onednn.strip().lower() in ("0", "false", "off") else "on")
  return text


def versions_text(run: Mapping[str, Any]) -> str:
  versions = run.get("versions") or {}
  return ", ".join(f"{k} {versions.get(k)}" for k in VERSION_KEYS if versions.get(k))


def _made_with(run: Mapping[str, Any]) -> Tuple[str, str]:
  return versions_text(run), device_text(run)


def mismatch_note(group: Sequence[CellResult]) -> Optional[str]:
  """A warning line where the cells of one table were made with different versions or devices
  (any of their phases); None where they agree or nothing is recorded."""
  kinds: Dict[Tuple[str, str], List[str]] = {}
  for cell in group:
    for phase, run, _ in records_of(cell):
      kinds.setdefault(_made_with(run), []).append(f"{cell.name} ({phase})")
  if len(kinds) < 2:
    return None
  parts = [f"{'; '.join(where)}: {versions} on {devices}"
           for (versions, devices), where in sorted(kinds.items(), key=lambda kv: kv[1])]
  return ("**Made with different versions or devices**, so not quite like for like: "
          + " | ".join(parts))


def _times_text(times: Mapping[str, Any]) -> str:
  shown = [f"{k[:-2] if k.endswith('_s') else k} {format_duration(v)}"
           for k, v in times.items() if isinstance(v, (int, float)) and k != "total_s"]
  total = times.get("total_s")
  if isinstance(total, (int, float)):
    shown.append(f"total {format_duration(total)}")
  return ", ".join(shown) or "-"


def records_section(cells: Sequence[CellResult]) -> str:
  """A table per cell and phase: commit, versions, devices, strategy, seed, wall times."""
  lines = ["## Run records", "",
           "How each number was made (the `run` field of its result file): the commit "
           "(*+dirty*: with uncommitted changes), versions, devices, strategy and replicas, "
           "seed and whether op determinism was on, and the wall time of each phase.", "",
           "| cell | phase | commit | versions | devices | strategy | seed | times |",
           "|:--|:--|:--|:--|:--|:--|--:|:--|"]
  seen = set()
  rows = 0
  for cell in cells:
    for phase, run, times in records_of(cell):
      key = (cell.name, phase)
      if key in seen:
        continue
      seen.add(key)
      rows += 1
      git = run.get("git") or {}
      commit = (git.get("commit") or "?")[:10] + ("+dirty" if git.get("dirty") else "")
      strategy = run.get("strategy") or {}
      seed = f"{run.get('random_seed')}" + (" (det.)" if run.get("deterministic") else "")
      lines.append(f"| {cell.name} | {phase} | {commit} | {versions_text(run)} | "
                   f"{device_text(run)} | {strategy.get('name', '?')} x"
                   f"{strategy.get('replicas', '?')} | {seed} | {_times_text(times)} |")
  if not rows:
    return ""
  return "\n".join(lines) + "\n"
