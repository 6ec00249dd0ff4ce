"""docs/reference.md is what report/reference.py renders from core/options.py, grid/gridfile.py
and the docstrings of the modules that write each result file: every option once, in its group,
with its default and help; the grid-file format; each result file's fields, the same as the files
a run really writes; so that the page cannot go stale."""

import os
import re

import pytest

from core import options
from report import reference
from tests.conftest import REPO_ROOT


def test_the_committed_page_is_current():
  page = open(os.path.join(REPO_ROOT, "docs", "reference.md")).read()
  assert page == reference.render() + "\n", (
      "docs/reference.md is stale: run .venv/bin/python scripts/write_reference.py")


def test_every_option_appears_once_in_its_group_with_its_default():
  text = reference.render()
  sections = re.split(r"\n## ", text)[1:]
  assert [s.split("\n", 1)[0] for s in sections] == list(options.GROUPS) + [
      "Grid files", "Result files"]
  sections = sections[:len(options.GROUPS)]
  rows = {}
  for section in sections:
    title = section.split("\n", 1)[0]
    for name in re.findall(r"^\| `--([a-z0-9_]+)`", section, flags=re.M):
      assert name not in rows, name
      rows[name] = title
  assert rows == options.GROUP_OF
  assert set(rows) == set(options.OPTIONS)
  row = next(line for line in text.splitlines() if line.startswith("| `--local_crops`"))
  assert "| int | 0 | pretext | yes |" in row
  row = next(line for line in text.splitlines() if line.startswith("| `--workdir`"))
  assert "| no |" in row
  row = next(line for line in text.splitlines() if line.startswith("| `--val_split`"))
  assert "| after training |" in row


def test_the_grid_file_format_names_every_section_and_cell_key():
  from grid import gridfile  # pylint: disable=g-import-not-at-top
  text = reference.grid_file_format()
  for section in gridfile.SECTIONS:
    assert f"[{section}]" in text or f"[[{section}]]" in text, section
  for key in gridfile.CELL_KEYS + gridfile.BASELINE_KEYS:
    assert key in text, key


def test_every_result_file_has_its_fields_on_the_page():
  text = reference.render()
  for name, _, module, after in reference.RESULT_FILES:
    block = reference.fields_block(module, after)
    assert block.startswith("{") and block in text, name
  with pytest.raises(ValueError, match="no block of fields"):
    reference.fields_block("grid/gridfile.py", "no such text")
