"""docs/reference.md, written from the one definition of every option (core/options.py), so that
the page cannot disagree with the flags: `scripts/write_reference.py` writes it and
tests/test_reference.py checks that the committed page is what this module renders."""

from typing import Any, List

from core import options

TITLE = "# Reference: every option"
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


def render() -> str:
  """The page: an introduction, then a table per group of options, in core/options.py's order."""
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
      "starts over).",
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
  return "\n".join(lines)
