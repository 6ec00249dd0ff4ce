"""Whether a cell, or one of its steps, is done: read from the files in the cell's folder alone
(cell.json's step records, the export, pretext_results.json, each evaluation's results.json or
cka.json)."""

import os
from typing import Any, Mapping

from core import files
from core import options
from core.files import CELL_FILE, PRETEXT_RESULTS_FILE
from grid.cells import Cell
from grid.flags import same_value


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


def step_done(cell: Cell, workdir: str, step: str, state: Mapping[str, Any]) -> bool:
  """Whether `step` of `cell` finished earlier with the same settings and its files are there."""
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
  results = files.read_json(os.path.join(workdir, name,
                                         files.evaluation_file(flags.get("task", ""))))
  return (isinstance(results, dict) and ("layers" in results or "matrix" in results)
          and _results_match(results, flags))


def cell_done(cell: Cell, workdir: str) -> bool:
  state = files.read_json(os.path.join(workdir, CELL_FILE)) or {}
  return all(step_done(cell, workdir, step, state) for step, _ in cell.steps(workdir))
