"""Runs a grid of experiments (pretext training + per-layer evaluation per cell) and reports them.

  python benchmark.py --grid=configs/grids/shapes.toml                 # run (resumes), report
  python benchmark.py --grid=configs/grids/shapes.toml --list          # the cells and their state
  python benchmark.py --grid=configs/grids/imagenet_paper.toml --executor=slurm --plan  # fits?
  python benchmark.py --grid=configs/grids/shapes.toml --cells='rotation-*,random_init-*'
  python benchmark.py --grid=configs/grids/shapes.toml --jobs=2          # two cells at a time
  python benchmark.py --grid=configs/grids/shapes.toml --executor=slurm  # every cell a SLURM job
  python benchmark.py --report_only --root=workdirs/grid_shapes,/mnt/b/grid_shapes  # merge roots

Each cell runs in <root>/<cell name>/ (default root: workdirs/grid_<grid name>); every step is a
subprocess of train_and_eval.py whose output goes to <cell>/log.txt. Finished cells are skipped,
interrupted ones resume. With --executor=slurm every cell is a SLURM job (the grid file's [slurm]
section says what it asks for); --detach submits and exits, the same command again attaches,
--cancel cancels the jobs. Before the first cell starts or job is submitted, every step is
checked and its memory and disk planned against the [slurm] settings or this machine
(grid/plan.py; --plan prints the plan and runs nothing). <root>/grid_status.json records every
cell's state and errors; the report goes to <root>/report/ (report.md, report.csv, report.json,
plots). Exit status: 0 when every selected cell succeeded, 1 when one failed, 2 for an invalid
grid file or flag, or a step that would fail or not fit.
"""

import os
import signal
import sys

from core import runtime

runtime.set_defaults()  # For its own TensorFlow and every step's (they inherit it).

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS

flags.DEFINE_string("grid", None, "Grid file (TOML), e.g. configs/grids/shapes.toml.")
flags.DEFINE_list("root", None, "Grid root: the directory of the cells (default: "
                  "workdirs/grid_<grid name>). With --report_only, several comma-separated "
                  "roots are merged into one report.")
flags.DEFINE_list("cells", [], "Run only these cells: names or globs, e.g. 'rotation-*'.")
flags.DEFINE_list("only_method", [], "Run only the cells of these methods (random_init for the "
                  "baselines).")
flags.DEFINE_list("only_architecture", [], "Run only the cells of these architectures.")
flags.DEFINE_boolean("list", False, "List the selected cells and their state; run nothing.")
flags.DEFINE_boolean("plan", False, "Check every step of the selected cells and print the plan: "
                     "each step's estimated peak memory per device and per node and its disk, "
                     "against the cell's [slurm] settings (--executor=slurm: gpu_mem, mem) or "
                     "this machine; run nothing. Exit status 2 when a step cannot fit (every run "
                     "checks the same before it starts).")
flags.DEFINE_boolean("show_commands", False, "With --list: also each step's command line.")
flags.DEFINE_boolean("report_only", False, "Only (re)make the report from the result files in "
                     "--root (one or several roots).")
flags.DEFINE_boolean("report", True, "Make the report after running.")
flags.DEFINE_string("report_dir", None, "Where the report goes (default: <first root>/report).")
flags.DEFINE_string("data_dir", None, "TFDS data directory for every step, over the grid's.")
flags.DEFINE_boolean("smoke", False, "A smoke run of the grid: every cell and step as the grid "
                     "file has them (image sizes, preprocessing, patches, precision, evaluations, "
                     "baselines, the report) on a few images and steps, each width divided by the "
                     "architecture's standard one (grid/gridfile.py, SMOKE_*); default root "
                     "workdirs/grid_<name>_smoke. E.g. the ImageNet grids on the ImageNet-shaped "
                     "set: --data_dir=workdirs/imagenet_like (scripts/prepare_imagenet_like.py).")
flags.DEFINE_boolean("stream_logs", False, "Echo every step's output (it always goes to "
                     "<cell>/log.txt); default: progress lines only.")
flags.DEFINE_boolean("fail_fast", False, "Stop at the first failed cell (default: go on).")
flags.DEFINE_float("progress_every_s", 30, "Seconds between progress lines when the output is "
                   "not a terminal.")
flags.DEFINE_integer("jobs", 1, "Cells run at once. Above 1, each step's TensorFlow gets "
                     "cpu_count // jobs threads: on a small CPU machine 2 is faster than 1. On "
                     "an accelerator keep 1 (the cells would share the device).", lower_bound=1)
flags.DEFINE_string("python", sys.executable, "Python interpreter for the steps.")
flags.DEFINE_enum("executor", "local", ["local", "slurm"], "Where the cells run: local "
                  "(subprocesses of this machine, --jobs at a time) or slurm (every cell a SLURM "
                  "job, as the grid file's [slurm] section asks; resubmitted when it ends "
                  "without its results, up to max_retries).")
flags.DEFINE_boolean("detach", False, "--executor=slurm: submit the jobs and exit; the same "
                     "command without --detach attaches to them and writes the report.")
flags.DEFINE_boolean("cancel", False, "--executor=slurm: cancel the queued and running jobs of "
                     "the selected cells.")
flags.DEFINE_float("slurm_poll_s", 15, "--executor=slurm: seconds between squeue calls while "
                   "attached.")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _error(message: str) -> int:
  print(f"error: {message}", file=sys.stderr)
  return EXIT_USAGE


def _report(roots, title):
  import report as report_lib  # pylint: disable=g-import-not-at-top
  try:
    paths, summary = report_lib.make_report(roots, FLAGS.report_dir, title=title)
  except FileNotFoundError as e:
    return _error(str(e))
  print(summary)
  print(f"report: {paths['markdown']} (also {os.path.basename(paths['csv'])}, "
        f"{os.path.basename(paths['json'])}, {len(paths['plots'])} plot(s))")
  return EXIT_OK


def _check_and_plan(cells, root, command, budget):
  """(problems, the plan's rows, its disk): the steps' checks and, where they pass, the plan
  (grid/plan.py)."""
  from grid import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from grid import preflight  # pylint: disable=g-import-not-at-top
  problems, plans, placements = preflight.check(cells, root, command, budget=budget)
  rows, plan_problems, disk = plan_lib.assess(cells, plans, placements, budget, root)
  return problems + plan_problems, rows, disk


def _print_problems(problems, grid_path):
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  if problems:
    print(f"{len(problems)} problem(s) in the steps of {grid_path}, found before they run; "
          "nothing was run", file=sys.stderr)


def run(argv) -> int:
  if len(argv) > 1:
    return _error(f"unexpected arguments: {' '.join(argv[1:])}")
  from core import files  # pylint: disable=g-import-not-at-top
  from grid import common  # pylint: disable=g-import-not-at-top
  from grid import flags as flags_lib  # pylint: disable=g-import-not-at-top
  from grid import gridfile  # pylint: disable=g-import-not-at-top
  from grid import local  # pylint: disable=g-import-not-at-top
  from grid import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from grid import slurm  # pylint: disable=g-import-not-at-top
  from grid import slurm_cluster  # pylint: disable=g-import-not-at-top
  from grid import runner as runner_lib  # pylint: disable=g-import-not-at-top
  from grid.cells import select_cells  # pylint: disable=g-import-not-at-top

  if FLAGS.report_only and not FLAGS.grid:
    if not FLAGS.root:
      return _error("--report_only needs --root (one or several comma-separated grid roots) or "
                    "--grid (its default root)")
    return _report(FLAGS.root, "Per-layer evaluation")
  if not FLAGS.grid:
    return _error("give --grid=<grid file>, e.g. --grid=configs/grids/shapes.toml "
                  "(or --report_only --root=<grid root>)")
  known = flags_lib.known_flags()
  overrides = {"data_dir": os.path.abspath(FLAGS.data_dir)} if FLAGS.data_dir else {}
  try:
    grid = gridfile.load_grid(FLAGS.grid, known, overrides=overrides, smoke=FLAGS.smoke)
    cells = select_cells(grid, FLAGS.cells, FLAGS.only_method, FLAGS.only_architecture)
  except common.GridError as e:
    return _error(str(e))
  roots = FLAGS.root or [os.path.join(
      "workdirs", f"grid_{grid.name}" + ("_smoke" if FLAGS.smoke else ""))]
  title = f"Grid {grid.name}" + (f": {grid.description}" if grid.description else "")
  if FLAGS.report_only:
    return _report(roots, title)
  if len(roots) > 1:
    return _error(f"--root={','.join(roots)}: running needs one root (several are for "
                  "--report_only)")
  root = roots[0]
  if FLAGS.list:
    print(f"{grid.path}: {len(cells)} of {len(grid.cells)} cell(s), root {root}")
    jobs = None
    if FLAGS.executor == "slurm":
      try:
        jobs = slurm_cluster.queue()
      except (OSError, slurm_cluster.ClusterError) as e:
        print(f"warning: the jobs' states are as last recorded: {e}", file=sys.stderr)
    print(runner_lib.describe(cells, root, FLAGS.show_commands, jobs=jobs))
    return EXIT_OK
  if not cells:
    return _error("the selection matches no cell")
  command = [FLAGS.python, common.TRAIN_AND_EVAL]
  budget = (plan_lib.SlurmBudget(grid.slurm["max_queued"]) if FLAGS.executor == "slurm" else
            plan_lib.LocalBudget(jobs=FLAGS.jobs))
  if FLAGS.plan:
    try:
      problems, rows, disk = _check_and_plan(cells, root, command, budget)
    except common.GridError as e:
      return _error(str(e))
    if rows:
      print(plan_lib.table(rows, disk))
    _print_problems(problems, grid.path)
    return EXIT_USAGE if problems else EXIT_OK
  if FLAGS.executor == "slurm":
    if FLAGS.jobs != 1:
      return _error(f"--jobs={FLAGS.jobs} is for --executor=local; under SLURM every cell is a "
                    "job of its own ([slurm] max_queued bounds how many are queued)")
    executor = slurm.SlurmExecutor(command, grid.slurm, poll_s=FLAGS.slurm_poll_s,
                                   detach=FLAGS.detach, progress_every_s=FLAGS.progress_every_s)
  else:
    for flag in ("detach", "cancel"):
      if FLAGS[flag].value:
        return _error(f"--{flag} is for --executor=slurm")
    executor = local.LocalExecutor(command, jobs=FLAGS.jobs, stream_logs=FLAGS.stream_logs,
                                   progress_every_s=FLAGS.progress_every_s)
  runner = runner_lib.GridRunner(root, executor, grid_name=grid.name,
                                 grid_path=os.path.abspath(grid.path), fail_fast=FLAGS.fail_fast)
  try:
    if FLAGS.cancel:
      cancelled = executor.cancel(cells, runner)
      print(f"cancelled {len(cancelled)} SLURM job(s)" +
            (f": {', '.join(cancelled)}" if cancelled else ""))
      return EXIT_OK
    if FLAGS.executor == "slurm":
      executor.check(cells)  # Before anything is submitted.
    problems, _, _ = _check_and_plan(cells, root, command, budget)  # Before any cell starts.
    if problems:
      _print_problems(problems, grid.path)
      return EXIT_USAGE
    statuses = runner.run(cells)
  except (common.GridError, slurm_cluster.ClusterError) as e:
    return _error(str(e))
  except KeyboardInterrupt:
    print("interrupted; the same command resumes the grid", file=sys.stderr)
    return 130
  if FLAGS.detach:
    return EXIT_OK
  failed = [n for n, s in statuses.items() if s.get("status") != "done"]
  if FLAGS.report:
    _report([root], title)
  if failed:
    print(f"{len(failed)} cell(s) did not succeed: {', '.join(failed)}; see "
          f"{os.path.join(root, files.STATUS_FILE)}", file=sys.stderr)
    return EXIT_FAILED
  return EXIT_OK


def _interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt  # The runner stops the running step and records the cell.


def main(argv):
  signal.signal(signal.SIGTERM, _interrupt)
  sys.exit(run(argv))


if __name__ == "__main__":
  app.run(main)
