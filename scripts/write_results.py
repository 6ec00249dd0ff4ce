"""Writes docs/results.md and docs/performance.md from the result files and bench outputs kept
under docs/results/ and docs/performance/ (report/results_page.py), adds a section to one of them
from a run, or with --check says whether the pages are current.

  .venv/bin/python scripts/write_results.py                 # rewrites both pages
  .venv/bin/python scripts/write_results.py --check         # exit 1 if one is not what this writes
  .venv/bin/python scripts/write_results.py --add=photos:workdirs/grid_photos \\
      --title="Every method on real photographs" \\
      --command="benchmark.py --grid=configs/grids/photos.toml --jobs=2"
  .venv/bin/python bench/throughput.py --json_out=/tmp/throughput.json
  .venv/bin/python scripts/write_results.py --page=performance \\
      --add=throughput_cpu:/tmp/throughput.json --title="Training steps on a CPU" \\
      --command="bench/throughput.py"
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from report import results_page

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
flags.DEFINE_string("docs", DOCS, "The folder of the pages (<page>.md) and their sections "
                    "(<page>/<section>/).")
flags.DEFINE_bool("check", False, "Only compare the pages with what would be written.")
flags.DEFINE_enum("page", "results", list(results_page.PAGES), "--add: the page of the section.")
flags.DEFINE_string("add", None, "<section>:<root>: copy the result files of a grid root (or "
                    "an evaluation's workdir, or a bench's JSON output) into "
                    "<docs>/<page>/<section>/, then write the pages.")
flags.DEFINE_string("title", None, "--add: the section's title.")
flags.DEFINE_string("command", None, "--add: the command that made the results.")
flags.DEFINE_string("about", "", "--add: a paragraph on what the section shows.")
flags.DEFINE_integer("order", 100, "--add: where the section goes (increasing).")
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.add:
    name, sep, root = FLAGS.add.partition(":")
    if not sep or not name or not root or os.sep in name:
      raise app.UsageError(f"--add={FLAGS.add!r}: give <section>:<root>, e.g. "
                           "photos:workdirs/grid_photos")
    if not FLAGS.title or not FLAGS.command:
      raise app.UsageError("--add needs --title and --command (what the section shows, and "
                           "what made it)")
    target = os.path.join(FLAGS.docs, FLAGS.page, name)
    try:
      copied = results_page.add_section(root, target, FLAGS.title, FLAGS.command, FLAGS.about,
                                        FLAGS.order)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"copied {len(copied)} result file(s) into {target}")
  stale = 0
  for page in results_page.PAGES:
    sections, out = os.path.join(FLAGS.docs, page), os.path.join(FLAGS.docs, f"{page}.md")
    if not os.path.isdir(sections):
      continue
    try:
      text = results_page.render(sections, out, page)
    except (OSError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    if FLAGS.check:
      current = open(out).read() if os.path.exists(out) else ""
      if current != text:
        print(f"{out} is not current: run scripts/write_results.py")
        stale += 1
      else:
        print(f"{out} is current")
      continue
    with open(out, "w") as f:
      f.write(text)
    print(f"wrote {out}")
  return 1 if stale else 0


if __name__ == "__main__":
  app.run(main)
