"""docs/reference.md is what report/reference.py renders from core/options.py: every option once,
in its group, with its default and help, so that the page cannot go stale."""

import os
import re

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
  assert [s.split("\n", 1)[0] for s in sections] == list(options.GROUPS)
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
