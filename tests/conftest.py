"""Shared fixtures: the small embedded dataset, prepared once per test session; a SLURM cluster."""

import os
import shutil
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from core import runtime  # pylint: disable=g-import-not-at-top

runtime.set_defaults()  # The tests run TensorFlow as the entry points do.

import pytest  # pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where scripts/slurm_cluster_start.sh puts its cluster by default.
DEFAULT_SLURM_CONF = os.path.join(os.environ.get("TMPDIR", "/tmp"), "ssl_bench_slurm",
                                  "slurm.conf")


@pytest.fixture(scope="session")
def shapes_data_dir(tmp_path_factory):
  """A TFDS data dir holding the prepared `shapes_small` dataset."""
  import datasets  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  datasets.get_dataset_info("shapes_small", data_dir)  # Prepares it on first use.
  return data_dir


@pytest.fixture(scope="session")
def slurm_conf():
  """The slurm.conf of a SLURM cluster that answers (scripts/slurm_cluster_start.sh starts one
  on this machine), in SLURM_CONF for every SLURM command. Without one, a test that needs it is
  skipped with the way to start one, except where SSL_BENCH_REQUIRE_SLURM=1 (CI): there it
  fails."""
  if not os.environ.get("SLURM_CONF") and os.path.exists(DEFAULT_SLURM_CONF):
    os.environ["SLURM_CONF"] = DEFAULT_SLURM_CONF
  problem = None
  if shutil.which("sinfo") is None:
    problem = "SLURM is not installed (apt-get install -y slurm-wlm munge)"
  else:
    proc = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True,
                          text=True, timeout=60)
    if proc.returncode != 0:
      problem = f"no SLURM cluster answers ({proc.stderr.strip()[-200:]})"
    elif not any(s.startswith(("idle", "mixed", "allocated")) for s in proc.stdout.split()):
      problem = f"the SLURM cluster has no node up (sinfo: {proc.stdout.split()})"
  if problem:
    message = (f"{problem}; start a one-node cluster with `sudo scripts/slurm_cluster_start.sh` "
               f"and export SLURM_CONF={DEFAULT_SLURM_CONF}")
    if os.environ.get("SSL_BENCH_REQUIRE_SLURM") == "1":
      pytest.fail(f"SSL_BENCH_REQUIRE_SLURM=1 but {message}")
    pytest.skip(message)
  return os.environ["SLURM_CONF"]


@pytest.fixture
def slurm_root(tmp_path, slurm_conf):
  """A grid root for the cluster; the jobs of it that are still queued or running are
  cancelled at the end of the test (a failed test leaves none behind)."""
  del slurm_conf
  from grid import slurm_cluster  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "root")
  yield root
  ids = [j for j, info in slurm_cluster.queue().items()
         if root in info["comment"] and info["state"] in slurm_cluster.ACTIVE_STATES]
  if ids:
    subprocess.run(["scancel", *ids], check=False)


# The SLURM tests' outcomes, listed at the end of the run (CI's log shows that they ran).
_SLURM_TESTS: dict = {}


def pytest_collection_modifyitems(items):
  """Tests that need the cluster are marked `slurm` (`-m "not slurm"` leaves them out)."""
  for item in items:
    if "slurm_conf" in getattr(item, "fixturenames", ()):
      item.add_marker(pytest.mark.slurm)


def pytest_runtest_setup(item):
  if "slurm_conf" in getattr(item, "fixturenames", ()):
    _SLURM_TESTS[item.nodeid] = "started"


def pytest_runtest_logreport(report):
  if report.nodeid in _SLURM_TESTS and (report.when == "call" or report.outcome != "passed"):
    _SLURM_TESTS[report.nodeid] = report.outcome


def pytest_terminal_summary(terminalreporter):
  if not _SLURM_TESTS:
    return
  counts = {}
  for outcome in _SLURM_TESTS.values():
    counts[outcome] = counts.get(outcome, 0) + 1
  terminalreporter.section("tests on the SLURM cluster")
  for nodeid, outcome in _SLURM_TESTS.items():
    terminalreporter.write_line(f"{outcome.upper():8} {nodeid}")
  terminalreporter.write_line(
      f"SLURM tests: {', '.join(f'{n} {o}' for o, n in sorted(counts.items()))} "
      f"(SLURM_CONF={os.environ.get('SLURM_CONF', 'unset')})")
