"""docs/results.md and docs/performance.md, written from the result files and bench outputs they
quote, so that no number on them is typed by hand and each table stands beside how it was made.

Each section of a page is a folder (docs/results/<section>/, docs/performance/<section>/): the
result files of one grid root or of one or more evaluation workdirs (results.json,
pretext_results.json, cell.json, cka.json and a probe series' series.json, at their paths under
the root: nothing else is copied), or
a bench's output (bench.json, as `write_bench_output` writes it: the --json_out of
bench/throughput.py, probes_vs_sklearn.py, probe_store.py, determinism.py, footprint.py and of
scripts/pretext_accuracy.py), and section.toml, which says what the section shows. A bench
output:

  {"bench": the script that measured it, "run": the run record of its process
   (training/run_record.py), "tables": [{"title", "columns": [names], "rows": [[cells as text]],
   "notes": [lines under the table]}]}

and a section.toml:

  title = "View-invariance methods on real photographs"
  order = 10                         # sections in increasing order, then by folder name
  command = "benchmark.py --grid=configs/grids/photos.toml --jobs=2"
  about = "One paragraph: what was run and what to read in it."

`add_section` copies a root's result files (or a bench output) into a section; `render` writes a
page from its sections: per section its title, paragraph and command, the report's tables
(report/tables.py), findings (report/findings.py), probes over training (report/over_training.py)
and layer similarities, or the bench's tables, and one line per
distinct run record (commit, versions, devices) of the files it read.
"""

import json
import os
import shutil
from typing import Any, Dict, List

from core import architectures
from core import files
from core.files import CELL_FILE, CKA_FILE, PRETEXT_RESULTS_FILE, RESULTS_FILE, SERIES_FILE
from report import findings
from report import over_training
from report import records
from report import similarity
from report.cells import evaluation_title, find_cell_dirs, load_cells
from report.tables import group_tables, layer_columns, markdown_table

SECTION_FILE = "section.toml"
SECTION_KEYS = ("title", "order", "command", "about")
BENCH_FILE = "bench.json"
KEPT_FILES = (RESULTS_FILE, PRETEXT_RESULTS_FILE, CELL_FILE, CKA_FILE, SERIES_FILE,
              BENCH_FILE)
# The pages: (title, what their tables are).
PAGES = {
    "results": ("Results", "Each table is the report's (`benchmark.py --report_only`): top-1 (%) "
                "of a linear probe on every layer of the frozen network, the best layer in "
                "bold, and the gain of the best layer over the random-init network of the same "
                "architecture on the same input."),
    "performance": ("Performance", "Each table is a bench's output, measured in one run: read "
                    "its figures against each other (a ratio), not against another run's, as "
                    "the machines these run on are shared."),
}


# The help of every bench's --json_out.
JSON_OUT_HELP = ("Also write the tables and the run record (commit, versions, the CPU and its "
                 "vector extensions) to this JSON file: what scripts/write_results.py --add puts "
                 "on docs/results.md or docs/performance.md.")


def bench_table(title: str, columns, rows, notes=()) -> Dict[str, Any]:
  """One table of a bench's output: its title, column names, rows (cells as text) and notes."""
  return {"title": title, "columns": [str(c) for c in columns],
          "rows": [[str(c) for c in row] for row in rows], "notes": [str(n) for n in notes]}


def bench_table_text(table: Dict[str, Any]) -> str:
  """A bench table as aligned plain text (what a bench prints): its title, rows and notes."""
  columns, rows = table["columns"], table["rows"]
  widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(columns)]
  lines = [f"{table['title']}:"] + [
      "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
      for row in [columns] + rows]
  return "\n".join(lines + list(table["notes"]))


def export_label(path: str) -> str:
  """How a bench's table names an export: 'the export of <run>' for <run>/export, else the path
  (a table names a run, not the folder it happened to be measured in)."""
  path = os.path.normpath(path)
  if os.path.basename(path) == "export":
    return f"the export of {os.path.basename(os.path.dirname(path))}"
  return path


def write_bench_output(path: str, bench: str, tables: List[Dict[str, Any]],
                       run: Dict[str, Any]) -> None:
  """Writes a bench's output as `add_section` and `render` read it: `bench` the script (e.g.
  bench/throughput.py), its tables (`bench_table`) and `run`, the run record of the process that
  measured them (training/run_record.py: commit, versions, the CPU and its vector extensions)."""
  files.write_json_atomic(path, {"bench": bench, "run": run, "tables": tables})


def _toml_string(text: str) -> str:
  """A TOML basic string (its escapes are JSON's for the characters these hold)."""
  return json.dumps(text, ensure_ascii=False)


def add_section(root: str, section_dir: str, title: str, command: str, about: str = "",
                order: int = 100) -> List[str]:
  """Copies the result files of `root` (a grid root or an evaluation workdir; or a bench's JSON
  output, as bench.json) into `section_dir`, at the same relative paths, and writes its
  section.toml; returns the copied paths. ValueError where `root` holds no results, or
  `section_dir` holds files of another kind (it is replaced only where it holds result files
  and a section.toml alone)."""
  bench = os.path.isfile(root)
  if bench:
    data = files.read_json(root)
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
      raise ValueError(f"{root}: not a bench output (a JSON file with 'tables', e.g. of "
                       "bench/throughput.py --json_out)")
  cell_dirs = [] if bench else find_cell_dirs(root)
  if not bench:  # And the layer similarities (cka.json) under it.
    cell_dirs += similarity.cka_dirs(root)
  if not bench and not cell_dirs:
    raise ValueError(f"{root}: no {RESULTS_FILE} under it (a grid root or an evaluation's "
                     "workdir), nor a bench output")
  if os.path.exists(section_dir):
    for directory, _, names in os.walk(section_dir):
      others = [n for n in names if n not in KEPT_FILES + (SECTION_FILE,)]
      if others:
        raise ValueError(f"{section_dir} holds {os.path.join(directory, others[0])}, which is "
                         "not a result file: give a folder of its own")
    shutil.rmtree(section_dir)
  copied = []
  if bench:
    os.makedirs(section_dir)
    copied.append(os.path.join(section_dir, BENCH_FILE))
    shutil.copyfile(root, copied[-1])
  for directory in cell_dirs:
    # An evaluation of a grid cell (<cell>/<evaluation>) brings the cell's own files too.
    for source in {directory, os.path.dirname(directory)}:
      if os.path.relpath(source, root).startswith(".."):
        continue
      for name in KEPT_FILES:
        path = os.path.join(source, name)
        if not os.path.isfile(path):
          continue
        target = os.path.join(section_dir, os.path.relpath(path, root))
        if target in copied:
          continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        copied.append(target)
  lines = [f"title = {_toml_string(title)}", f"order = {int(order)}",
           f"command = {_toml_string(command)}", f"about = {_toml_string(about)}"]
  files.write_text_atomic(os.path.join(section_dir, SECTION_FILE), "\n".join(lines) + "\n")
  return sorted(copied)


def read_section(section_dir: str) -> Dict[str, Any]:
  """The section.toml of `section_dir`; ValueError naming a missing or unknown key."""
  data = files.read_toml(os.path.join(section_dir, SECTION_FILE), "results section")
  unknown = sorted(set(data) - set(SECTION_KEYS))
  if unknown:
    raise ValueError(f"{section_dir}/{SECTION_FILE}: unknown key {unknown[0]!r}; valid keys: "
                     f"{', '.join(SECTION_KEYS)}")
  for key in ("title", "command"):
    if not isinstance(data.get(key), str) or not data[key]:
      raise ValueError(f"{section_dir}/{SECTION_FILE}: {key} is required (a string)")
  return data


def sections(results_dir: str) -> List[str]:
  """The section folders of `results_dir`, in page order."""
  found = [os.path.join(results_dir, n) for n in os.listdir(results_dir)
           if os.path.isfile(os.path.join(results_dir, n, SECTION_FILE))]
  return sorted(found, key=lambda d: (read_section(d).get("order", 100), os.path.basename(d)))


def _made_with(run) -> str:
  git = run.get("git") or {}
  commit = (git.get("commit") or "?")[:10] + ("+dirty" if git.get("dirty") else "")
  return f"commit {commit}, {records.versions_text(run)}, {records.device_text(run)}"


def _record_lines(cells) -> List[str]:
  """One line per distinct (commit, versions, devices) of the cells' run records, with the
  cells and phases made so."""
  made: Dict[str, List[str]] = {}
  for cell in cells:
    for phase, run, _ in records.records_of(cell):
      made.setdefault(_made_with(run), []).append(f"{cell.name} ({phase})")
  return [f"- {key}: {', '.join(where)}" for key, where in sorted(made.items())]


def _bench_lines(path: str) -> List[str]:
  """The tables of a bench output, and how it was made."""
  data = files.read_json(path) or {}
  lines = []
  for t in data.get("tables") or []:
    lines += [f"### {t['title']}", "",
              "| " + " | ".join(t["columns"]) + " |",
              "|" + "|".join([":--"] + ["--:"] * (len(t["columns"]) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in t["rows"]] + [""]
    lines += [f"- {note}" for note in t.get("notes") or []]
    lines += [""] if t.get("notes") else []
  run = data.get("run")
  if isinstance(run, dict):
    lines += [f"How these numbers were made: {_made_with(run)}, "
              f"{(run.get('finished') or '?')[:10]}.", ""]
  return lines


def render_section(section_dir: str, page_dir: str) -> List[str]:
  """The Markdown lines of one section."""
  info = read_section(section_dir)
  lines = [f"## {info['title']}", ""]
  if info.get("about"):
    lines += [info["about"].strip(), ""]
  lines += [f"Made by `{info['command']}`; the result files are in "
            f"`{os.path.relpath(section_dir, page_dir)}/`.", ""]
  if os.path.isfile(os.path.join(section_dir, BENCH_FILE)):
    return lines + _bench_lines(os.path.join(section_dir, BENCH_FILE))
  cells, _ = load_cells([section_dir])
  for key, family, group in group_tables(cells):
    lines += [f"### {evaluation_title(key)} - "
              f"{architectures.FAMILY_TITLES.get(family, family)}", ""]
    lines += [markdown_table(group, layer_columns(group)), ""]
  # The report's findings and layer similarities, their headings one level down.
  for line in (findings.findings_section(cells) +
               over_training.series_section(cells, draw=False)[0] +
               similarity.cka_section(similarity.find_cka([section_dir]), draw=False)[0]):
    lines.append("#" + line if line.startswith("#") else line)
  made = _record_lines(cells)
  if made:
    lines += ["How these numbers were made (the run records of their result files):", ""]
    lines += made + [""]
  return lines


def render(results_dir: str, page_path: str, page: str = "results") -> str:
  """The whole page `page` (PAGES) from the sections of `results_dir`."""
  page_dir = os.path.dirname(os.path.abspath(page_path))
  title, tables = PAGES[page]
  lines = [f"# {title}", "",
           "Written by `scripts/write_results.py` from the files under "
           f"`{os.path.relpath(results_dir, page_dir)}/`: no number here is typed by hand. "
           f"{tables} To add a section from a run: `scripts/write_results.py "
           f"--page={page} --add=<name>:<root or bench output> --title=... --command=...`.", ""]
  for section_dir in sections(results_dir):
    lines += render_section(section_dir, page_dir)
  return "\n".join(lines).rstrip() + "\n"
