"""Writes docs/results.md from the result files kept under docs/results/ (report/results_page.py),
adds a section from a run's result files, or with --check says whether the page is current.

  .venv/bin/python scripts/write_results.py                 # rewrites docs/results.md
  .venv/bin/python scripts/write_results.py --check         # exit 1 if it is not what this writes
  .venv/bin/python scripts/write_results.py --add=photos:workdirs/grid_photos \\
      --title="Every method on real photographs" \\
      --command="benchmark.py --grid=configs/grids/photos.toml --jobs=2"
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from report import results_page

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")
flags.DEFINE_string("results_dir", os.path.join(DOCS, "results"),
                    "The sections: one folder each, of result files and a section.toml.")
flags.DEFINE_string("out", os.path.join(DOCS, "results.md"), "The page to write.")
flags.DEFINE_bool("check", False, "Only compare the page with what would be written.")
flags.DEFINE_string("add", None, "<section>:<root>: copy the result files of a grid root (or an "
                    "evaluation's workdir) into <results_dir>/<section>/, then write the page.")
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
    try:
      copied = results_page.add_section(root, os.path.join(FLAGS.results_dir, name),
                                        FLAGS.title, FLAGS.command, FLAGS.about, FLAGS.order)
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
    print(f"copied {len(copied)} result file(s) into {os.path.join(FLAGS.results_dir, name)}")
  try:
    text = results_page.render(FLAGS.results_dir, FLAGS.out)
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if FLAGS.check:
    current = open(FLAGS.out).read() if os.path.exists(FLAGS.out) else ""
    if current != text:
      print(f"{FLAGS.out} is not current: run scripts/write_results.py")
      return 1
    print(f"{FLAGS.out} is current")
    return 0
  with open(FLAGS.out, "w") as f:
    f.write(text)
  print(f"wrote {FLAGS.out}")
  return 0


if __name__ == "__main__":
  app.run(main)
