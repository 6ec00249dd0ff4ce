"""Whether a cell, or one of its steps, is done, and which of its steps were run with other
settings: read from the files in the cell's folder alone (cell.json's step records, the export,
pretext_results.json, each evaluation's results.json or cka.json)."""

import os
from typing import Any, List, Mapping, Tuple

from core import files
from core import options
from core.files import CELL_FILE, PRETEXT_RESULTS_FILE
from grid.cells import Cell
from grid.common import SLURM_DIR
from grid.flags import same_value

# What stays in a cell's folder when its outputs are moved aside (`set_aside`): the runs' logs.
KEPT_ON_CHANGE = (SLURM_DIR, files.LOG_FILE)


def _results_match(results: Mapping[str, Any], eval_flags: Mapping[str, Any]) -> bool:
  """Whether a results.json's config agrees with the evaluation flags it shares fields with."""
  config = results.get("config") or {}
  for name, value in eval_flags.items():
    if name in ("task", "hub_module") + options.NON_RESULT or name not in config:
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
    if not same_value(have, value):
      return False
  return True


def _of_export(results: Mapping[str, Any], workdir: str, task: str) -> bool:
  """Whether an evaluation's results were made from the cell's export as it is now (the
  fingerprint they record, core/files.export_fingerprint). A series checks each of its
  checkpoints' exports itself."""
  if task == "probe_series":
    return True
  if task == "cka":
    recorded = (results.get("fingerprints") or [None])[0]
  else:
    recorded = (results.get("source") or {}).get("fingerprint")
  return recorded is not None and recorded == files.export_fingerprint(
      os.path.join(workdir, files.EXPORT_DIR))


def step_done(cell: Cell, workdir: str, step: str, state: Mapping[str, Any]) -> bool:
  """Whether `step` of `cell` finished earlier with the same settings and its files are there
  (an evaluation's, of the export that is there now)."""
  recorded = (state.get("steps") or {}).get(step) or {}
  if not recorded.get("done") or recorded.get("fingerprint") != cell.fingerprints()[step]:
    return False
  if step == "pretext":
    if not os.path.exists(os.path.join(workdir, "export", "saved_model.pb")):
      return False
    return not cell.pretext_flags.get("run_eval") or os.path.exists(
        os.path.join(workdir, PRETEXT_RESULTS_FILE))
  name = step.split(":", 1)[1]
  flags = cell.evaluations[name]
  task = flags.get("task", "")
  results = files.read_json(os.path.join(workdir, name, files.evaluation_file(task)))
  return (isinstance(results, dict) and ("layers" in results or "matrix" in results)
          and _results_match(results, flags)
          and (cell.pretext_flags is None or _of_export(results, workdir, task)))


def cell_done(cell: Cell, workdir: str) -> bool:
  state = files.read_json(os.path.join(workdir, CELL_FILE)) or {}
  return all(step_done(cell, workdir, step, state) for step, _ in cell.steps(workdir))


def changed_steps(cell: Cell, state: Mapping[str, Any]) -> List[str]:
  """The steps that cell.json records as run with other settings than the cell's now (steps
  with no record, or a record without a fingerprint, are not changed: nothing says so)."""
  recorded = state.get("steps") or {}
  return [step for step, fingerprint in cell.fingerprints().items()
          if (recorded.get(step) or {}).get("fingerprint") not in (None, fingerprint)]


def describe_change(cell: Cell, state: Mapping[str, Any]) -> str:
  """What changed of a cell since cell.json was written, for --list: the pretext options that
  differ (it retrains from step 0), or the evaluations that re-run."""
  changed = changed_steps(cell, state)
  if "pretext" in changed:
    before = dict(state.get("pretext_flags") or {})
    differences = [(k, before.get(k), v) for k, v in cell.pretext_flags.items()
                   if k not in options.NON_RESULT and not same_value(before.get(k), v)]
    differences += [(k, v, None) for k, v in before.items()
                    if k not in cell.pretext_flags and k not in options.NON_RESULT]
    shown = options.format_differences(differences) if differences else "its settings"
    return f"changed: {shown}; retrains from step 0"
  names = [step.split(":", 1)[1] for step in changed]
  return f"changed: evaluation {', '.join(names)} re-runs" if names else ""


def set_aside(cell: Cell, workdir: str, state: Mapping[str, Any]) -> Tuple[List[str], str]:
  """Moves what a cell's changed steps made (`changed_steps`) to <cell>/replaced/<time>/: all
  of its outputs (but the logs, KEPT_ON_CHANGE) where its pretext settings changed, else the
  folders of the changed evaluations. Returns (the changed steps, where they went or '')."""
  changed = changed_steps(cell, state)
  if not changed:
    return [], ""
  if "pretext" in changed:
    names = [n for n in os.listdir(workdir) if n not in KEPT_ON_CHANGE]
  else:
    names = [step.split(":", 1)[1] for step in changed]
  return changed, files.move_aside(workdir, names) or ""
