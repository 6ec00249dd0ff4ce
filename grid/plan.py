"""The plan of a grid, made before anything runs or is submitted (benchmark.py --plan, and at the
start of every run): for every step of the cells to run, what it will hold and write, from the
estimates that `train_and_eval.py --check_steps` makes while it checks the steps
(training/footprint.py), against what the step gets:

  - under --executor=slurm, the cell's job ([slurm] and the cell's slurm table): its GPUs, each
    of `gpu_mem` (the plan's own key, not sent to sbatch; a step must fit in GPU_FIT of it, and
    without it GPU memory is not checked), and `mem` per node. A multi-task job trains on every
    task (multi-worker: the global batch is shared out over every GPU of the job) and evaluates
    on task 0 with its share of a node's GPUs;
  - on this machine, its memory (divided among --jobs cells at once) and its GPUs (nvidia-smi).
    A step runs on one device unless its --strategy is mirrored (every GPU).
Where the steps run on CPUs, the training step's memory is host memory too.

Disk: what every cell keeps (checkpoints, exports, kept feature caches), and what the cells that
run at once (--jobs; under SLURM max_queued) hold while a step runs and remove when it ends (a
feature cache of --feature_cache=workdir, fine-tuning checkpoints): the largest of them,
against the free space at the grid root. Sizes are printed in GiB (SLURM's "G").
"""

import dataclasses
import os
import shutil
import subprocess
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from grid import slurm_settings
from grid.cells import Cell

GIB = 1 << 30
# A step fits a GPU when its estimate is at most this share of the GPU's memory: the rest is the
# CUDA context, cuDNN's workspaces and the allocator's fragmentation.
GPU_FIT = 0.9


@dataclasses.dataclass(frozen=True)
class Placement:
  """What one step of a cell gets."""
  replicas: int                 # Devices its training (or extraction) runs on.
  processes: int                # Processes of the step (multi-worker tasks), in all.
  processes_per_node: int
  replicas_per_node: int
  gpu_bytes: Optional[int]      # Memory of one of its GPUs; None: CPUs, or not known.
  gpus: bool                    # Whether it runs on GPUs.
  host_bytes: Optional[int]     # Host memory of a node (or this machine's share); None: unknown.
  where: str                    # What sets it, for the messages.


class Budget:
  """Where the cells' steps run; `placement(cell, step, flags)`; `concurrent` cells at once."""
  concurrent: int = 1

  def placement(self, cell: Cell, step: str, flags: Mapping[str, Any]) -> Placement:
    raise NotImplementedError

  def runtime_flags(self, cell: Cell, step: str) -> Dict[str, Any]:
    """The flags the executor adds to the step (they change what its model holds: synchronised
    batch norm under a multi-device strategy)."""
    del cell, step
    return {}

  def device_fix(self, kind: str) -> str:
    """The setting to change for a step of `kind` (training/footprint.KINDS) over a GPU."""
    raise NotImplementedError

  def host_fix(self) -> str:
    raise NotImplementedError


class SlurmBudget(Budget):
  """Every cell a SLURM job, as its slurm settings ask; `max_queued` of them at once."""

  def __init__(self, max_queued: int = slurm_settings.GRID_DEFAULTS["max_queued"]):
    self.concurrent = max_queued

  def placement(self, cell, step, flags):
    s = cell.slurm
    nodes, per_node = int(s.get("nodes", 1)), int(s.get("tasks_per_node", 1))
    gpus = int(s.get("gpus_per_node", 0))
    gpu_bytes = slurm_settings.memory_bytes(s["gpu_mem"]) if gpus and "gpu_mem" in s else None
    host = slurm_settings.memory_bytes(s["mem"]) if "mem" in s else None
    where = f"the slurm settings of cell {cell.name}"
    mirrored = flags.get("strategy") == "mirrored"
    if step == "pretext" and nodes * per_node > 1:  # Multi-worker over every task.
      return Placement(nodes * (gpus or per_node), nodes * per_node, per_node, gpus or per_node,
                       gpu_bytes, bool(gpus), host, where)
    visible = gpus // per_node if step != "pretext" else gpus  # Task 0's share of the node's.
    replicas = visible if mirrored and visible else 1
    return Placement(replicas, 1, 1, replicas, gpu_bytes, bool(gpus), host, where)

  def runtime_flags(self, cell, step):
    return slurm_settings.runtime_flags(cell.slurm).get(step, {})

  def device_fix(self, kind):
    if kind == "training":
      return ("give it more GPUs (nodes or gpus_per_node in its slurm table: the global "
              "--batch_size is shared out over them) or set gpu_mem to its GPUs' memory")
    if kind == "fine-tuning":
      return ("give its process more GPUs (gpus_per_node over tasks_per_node) with "
              "--strategy=mirrored in its flags, or set gpu_mem to its GPUs' memory")
    return "a smaller --eval_batch_size, or set gpu_mem to its GPUs' memory"

  def host_fix(self):
    return "raise mem in its slurm table (or [slurm])"


class LocalBudget(Budget):
  """This machine, `jobs` cells at a time."""

  def __init__(self, jobs: int = 1, memory_bytes: Optional[int] = None,
               gpu_bytes: Optional[Sequence[int]] = None):
    self.jobs = self.concurrent = jobs
    self.memory = memory_bytes if memory_bytes is not None else machine_memory()
    self.gpu_bytes = list(gpu_bytes) if gpu_bytes is not None else machine_gpus()

  def placement(self, cell, step, flags):
    gpus = len(self.gpu_bytes)
    replicas = gpus if flags.get("strategy") == "mirrored" and gpus else 1
    where = "this machine" + (f" (--jobs={self.jobs}: a share of 1/{self.jobs} each)"
                              if self.jobs > 1 else "")
    return Placement(replicas, 1, 1, replicas, min(self.gpu_bytes) if gpus else None, bool(gpus),
                     self.memory // self.jobs, where)

  def device_fix(self, kind):
    return ("a smaller --eval_batch_size" if kind == "extraction" else
            "--strategy=mirrored over more GPUs, or a smaller --batch_size") + (
                " (or a machine with more GPU memory)")

  def host_fix(self):
    return "fewer --jobs, smaller splits, or a machine with more memory"


def machine_memory() -> int:
  """This machine's memory in bytes (/proc/meminfo's MemTotal)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) << 10
  except OSError:
    pass
  return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def machine_gpus() -> List[int]:
  """The memory of each NVIDIA GPU of this machine in bytes (nvidia-smi); [] without one."""
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                          "nounits"], capture_output=True, text=True, timeout=30)
  except (OSError, subprocess.SubprocessError):
    return []
  if out.returncode:
    return []
  return [int(float(line)) << 20 for line in out.stdout.split() if line.strip()]


@dataclasses.dataclass
class Row:
  """One step's line of the plan."""
  cell: str
  step: str
  placement: Placement
  estimate: Dict[str, Any]  # training/footprint.Step's fields

  @property
  def node_host_bytes(self) -> int:
    """Host memory of a node: its processes and, on CPUs, its replicas' training."""
    host = self.placement.processes_per_node * self.estimate["host_bytes"]
    if not self.placement.gpus:
      host += self.placement.replicas_per_node * self.estimate["device_bytes"]
    return int(host)


def assess(cells: Sequence[Cell], plans: Mapping[str, Mapping[str, Any]],
           placements: Mapping[str, Placement], budget: Budget, root: str,
           free_disk: Optional[int] = None) -> Tuple[List[Row], List[str], Dict[str, int]]:
  """(the plan's rows, its problems: one line per step that cannot fit, naming the cell, the
  step, the estimate and the setting to change, and the disk: {'need', 'free'}). `plans`: the
  estimates by entry name ('<cell>, step <step>'); `placements` the same keys'; `free_disk`:
  the bytes free at the root (default: measured there)."""
  rows, problems = [], []
  kept, scratch = 0, []
  for cell in cells:
    cell_scratch = 0
    for name, estimate in plans.items():
      if not name.startswith(f"{cell.name}, step "):
        continue
      step = name[len(f"{cell.name}, step "):]
      row = Row(cell.name, step, placements[name], dict(estimate))
      rows.append(row)
      p, e = row.placement, row.estimate
      if p.gpus and p.gpu_bytes and e["device_bytes"] > GPU_FIT * p.gpu_bytes:
        problems.append(
            f"{cell.name}, step {step}: needs about {_gib(e['device_bytes'])} GiB per GPU "
            f"({e['what']}, on {p.replicas} GPU(s)), over {GPU_FIT:.0%} of the "
            f"{_gib(p.gpu_bytes)} GiB of {p.where}; {budget.device_fix(e['kind'])}")
      if p.host_bytes and row.node_host_bytes > p.host_bytes:
        problems.append(
            f"{cell.name}, step {step}: needs about {_gib(row.node_host_bytes)} GiB of host "
            f"memory{' per node' if isinstance(budget, SlurmBudget) else ''} ({e['what']}), "
            f"over the {_gib(p.host_bytes)} GiB of {p.where}; {budget.host_fix()}")
      kept += e["disk_bytes"]
      cell_scratch = max(cell_scratch, e["scratch_bytes"])
    scratch.append(cell_scratch)
  need = kept + sum(sorted(scratch, reverse=True)[:budget.concurrent])
  free = free_bytes(root) if free_disk is None else free_disk
  if need > free:
    problems.append(f"the cells need about {_gib(need)} GiB of disk under the grid root {root}, "
                    f"which has {_gib(free)} GiB free; give --root on a larger disk")
  return rows, problems, {"need": need, "free": free}


def _gib(value: float) -> str:
  return f"{value / GIB:.3g}"


def free_bytes(path: str) -> int:
  """Free bytes of the file system `path` is (or would be) on."""
  path = os.path.abspath(path)
  while not os.path.exists(path):
    path = os.path.dirname(path)
  return shutil.disk_usage(path).free


def table(rows: Sequence[Row], disk: Mapping[str, int]) -> str:
  """The plan as text: a line per step, then the disk ({'need'[, 'free']})."""
  def size(value: Optional[float]) -> str:
    return "?" if value is None else f"{value / GIB:.1f}"

  header = ("cell", "step", "replicas", "device GiB/replica (of)", "host GiB/node (of)",
            "disk GiB (+scratch)", "what")
  lines = [header]
  for r in rows:
    p, e = r.placement, r.estimate
    device = f"{size(e['device_bytes'])} ({size(p.gpu_bytes) if p.gpus else 'host'})"
    lines.append((r.cell, r.step, f"{p.replicas} {'GPU' if p.gpus else 'CPU'}", device,
                  f"{size(r.node_host_bytes)} ({size(p.host_bytes)})",
                  f"{size(e['disk_bytes'])} (+{size(e['scratch_bytes'])})", e["what"]))
  widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
  text = ["  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1]
          for line in lines]
  free = f", {size(disk['free'])} GiB free there" if "free" in disk else ""
  text.append(f"disk: about {size(disk['need'])} GiB at the root's peak (what the cells keep, "
              f"and the scratch of those that run at once){free}")
  return "\n".join(text)
