"""The grid runner: grid files -> cells -> what is done -> an executor runs the rest -> status.

  gridfile.py   grid files (TOML) -> a Grid of Cells, with the baseline cells added
  flags.py      what train_and_eval.py accepts, flag values, flagfiles
  cells.py      a cell: its name, its steps, its fingerprints; selecting cells
  state.py      whether a cell (or one of its steps) is done, from the files in its folder
  status.py     <root>/grid_status.json and its lock
  progress.py   durations, ETA and the progress lines
  steps.py      running a cell's steps as subprocesses of train_and_eval.py
  runner.py     the run of a grid: skip what is done, hand the rest to an executor
  local.py      the local executor: cells as subprocesses of this machine, --jobs at a time
  slurm.py      the SLURM executor: every cell a SLURM job (submitit), resubmitted on faults
  slurm_settings.py  the [slurm] settings of a grid file, checked without a cluster
  slurm_cluster.py   what the SLURM executor asks the cluster (partitions, jobs, test-only)
  slurm_job.py  what runs inside a cell's SLURM job

The grid root's files (each cell's cell.json, export and results.json) are the only truth about
what is done, so any executor can resume a root that another one started.
"""
