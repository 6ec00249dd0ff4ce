"""docs/reference.md, written from the one definition of every option (core/options.py), of the
grid-file format (grid/gridfile.py's docstring) and of every result file's fields (the docstring of
the module that writes it), so that the page cannot disagree with the code:
`scripts/write_reference.py` writes it and tests/test_reference.py checks that the committed page
is what this module renders. The docstrings are read as text (ast), not imported: the page names
files of every layer without this package depending on them."""

import ast
import os
from typing import Any, List, Tuple

from core import files
from core import options
from report import outputs
from report import results_page

TITLE = "# Reference: options, grid files, result files"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID_FILE_MODULE = "grid/gridfile.py"
GRID_FILE_START = "Grid file sections"  # Where the format begins in that module's docstring.
# Every file that a run, a grid or a report leaves for a reader: (its name, where it lies, the
# module whose docstring gives its fields, the text after which that docstring's first indented
# block beginning with "{" is them).
RESULT_FILES: Tuple[Tuple[str, str, str, str], ...] = (
    (files.PRETEXT_RESULTS_FILE, "`<pretext workdir>/`, with `--run_eval`", "train_and_eval.py",
     files.PRETEXT_RESULTS_FILE),
    (files.EXPORT_INFO_FILE, "`<pretext workdir>/export/` and each kept checkpoint's export",
     "training/export.py", files.EXPORT_INFO_FILE),
    (files.RESULTS_FILE, "`<evaluation workdir>/` (linear_eval, fine_tune; probe_series: of its "
     "last checkpoint, and `step_<N>/` of each)", "eval/results.py", files.RESULTS_FILE),
    (files.SERIES_FILE, "`<probe_series workdir>/`", "eval/series.py", files.SERIES_FILE),
    (files.CKA_FILE, "`<cka workdir>/`", "eval/cka.py", files.CKA_FILE),
    ("the run record", "the `run` field of each of the files above", "training/run_record.py",
     '"run" field'),
    (files.CELL_FILE, "`<grid root>/<cell>/`", "grid/steps.py", files.CELL_FILE),
    (files.STATUS_FILE, "`<grid root>/`", "grid/status.py", files.STATUS_FILE),
    ("report.json", "`<grid root>/report/`", "report/outputs.py", "report.json:"),
    (results_page.BENCH_FILE, "a bench's `--json_out`; `docs/performance/<section>/`",
     "report/results_page.py", results_page.BENCH_FILE),
)
_CONFIG_NAMES = {options.PRETEXT: "pretext", options.EVAL: "evaluation",
                 options.FINE_TUNE: "fine-tuning"}


def _value(value: Any) -> str:
  """A default as a user writes it on the command line."""
  if value is None:
    return "(none)"
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value) if value else "(empty)"
  return str(value)


def _cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def _kind(option: options.Option) -> str:
  if option.choices is not None:
    return " | ".join(f"`{c}`" for c in option.choices)
  return {"string": "text", "list": "list", "enum": "choice"}.get(option.kind, option.kind)


def _default(option: options.Option) -> str:
  default = _value(option.default)
  if option.has_eval_default:
    return f"{default}; evaluations: {_value(option.eval_default)}"
  return default


def docstring(module: str) -> str:
  """The docstring of the module at `module` (a path from the repository's root)."""
  with open(os.path.join(ROOT, module)) as f:
    return ast.get_docstring(ast.parse(f.read(), module)) or ""


def fields_block(module: str, after: str) -> str:
  """The first indented block of `module`'s docstring that begins with "{" after the first line
  holding `after`, dedented: the fields of a file, as that module defines them. ValueError where
  there is none (the page would have nothing to show)."""
  lines = docstring(module).splitlines()
  start = next((i for i, line in enumerate(lines) if after in line), None)
  if start is not None:
    for i in range(start, len(lines)):
      if lines[i].startswith("  {"):
        end = i
        while end < len(lines) and lines[end].startswith(" ") and lines[end].strip():
          end += 1
        return "\n".join(line[2:] for line in lines[i:end])
  raise ValueError(f"{module}: no block of fields beginning with '{{' after {after!r} in its "
                   "docstring")


def grid_file_format() -> str:
  """The grid-file format: grid/gridfile.py's docstring from its list of sections on."""
  text = docstring(GRID_FILE_MODULE)
  start = text.find(GRID_FILE_START)
  if start < 0:
    raise ValueError(f"{GRID_FILE_MODULE}: its docstring has no {GRID_FILE_START!r}")
  return text[start:].strip()


def _code(text: str) -> List[str]:
  return ["```text", text, "```", ""]


def _files_part() -> List[str]:
  lines = ["## Grid files", "",
           f"A grid file is TOML (`configs/grids/*.toml` are examples); from `{GRID_FILE_MODULE}`:",
           ""] + _code(grid_file_format())
  lines += ["## Result files", "",
            "Every file that a run, a grid or a report writes for a reader, with its fields as the "
            "module that writes it defines them. Files are written whole or not at all (a "
            "temporary file renamed over the old one); outputs made with other settings are "
            f"moved to `<folder>/{files.REPLACED_DIR}/<UTC time>/`, never read as results.", ""]
  for name, where, module, after in RESULT_FILES:
    lines += [f"### {name}", "", f"In {where}; defined in `{module}`.", ""]
    lines += _code(fields_block(module, after))
  lines += ["### report.csv", "",
            "In `<grid root>/report/`, beside report.json and report.md: one row per cell and "
            "layer of every table (`report/outputs.py`), with the columns", "",
            ", ".join(f"`{c}`" for c in outputs.CSV_FIELDS) + ".", ""]
  return lines


def render() -> str:
  """The page: an introduction, a table per group of options in core/options.py's order, the
  grid-file format, and every result file's fields."""
  lines: List[str] = [
      TITLE,
      "",
      "Written by `.venv/bin/python scripts/write_reference.py` from `core/options.py` (do not "
      "edit by hand; `tests/test_reference.py` fails when the two differ). Every option is a "
      "flag of `train_and_eval.py` (`--name=value`, `--name` / `--noname` for true / false) "
      "and a key of a grid file's `flags` tables. *Used by* names the runs that read it: "
      "pretext training, the evaluations of an export (`--task=linear_eval`, "
      "`probe_series`, `cka`) and fine-tuning (`--task=fine_tune`). *Identity*: an option "
      "marked *no* (paths, logging, cadences, how the same computation is spread) may change "
      "between the runs of one workdir, one marked *after training* acts only on what every "
      "run redoes from the last checkpoint; a change of any other is refused (`--restart` "
      "starts over). Below the options: the grid-file format and the fields of every result "
      "file. What each bad input gets (the message, the exit status, what is kept): "
      "[bad_input.md](bad_input.md).",
      "",
  ]
  for group, members in options.in_groups():
    lines += [f"## {group}", "", "| option | values | default | used by | identity | what |",
              "|---|---|---|---|---|---|"]
    for option in members:
      name = f"`--{option.name}`" + "".join(f" (`--{a}`)" for a in option.aliases)
      used = ", ".join(_CONFIG_NAMES[c] for c in option.configs)
      identity = ("no" if not option.affects_results else
                  "after training" if option.name in options.AFTER_TRAINING else "yes")
      lines.append(f"| {name} | {_cell(_kind(option))} | {_cell(_default(option))} | {used} | "
                   f"{identity} | {_cell(option.help)} |")
    lines.append("")
  return "\n".join(lines + _files_part()).rstrip("\n")
