"""Writes docs/reference.md (every option by group, from core/options.py; the grid-file format;
every result file's fields, from the docstrings of the modules that write them), or with --check
says whether the page is current.

  .venv/bin/python scripts/write_reference.py            # rewrites docs/reference.md
  .venv/bin/python scripts/write_reference.py --check    # exit 1 if it is not what this writes
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from report import reference

PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                    "reference.md")
flags.DEFINE_string("out", PAGE, "The page to write.")
flags.DEFINE_bool("check", False, "Only compare the page with what would be written.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  text = reference.render() + "\n"
  if FLAGS.check:
    current = open(FLAGS.out).read() if os.path.exists(FLAGS.out) else ""
    if current != text:
      print(f"{FLAGS.out} is not current: run scripts/write_reference.py")
      return 1
    print(f"{FLAGS.out} is current")
    return 0
  with open(FLAGS.out, "w") as f:
    f.write(text)
  print(f"wrote {FLAGS.out}")
  return 0


if __name__ == "__main__":
  app.run(main)
