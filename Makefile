# All set-up happens here: the first target that needs Python creates .venv and installs the pinned
# dependencies into it. Nothing is installed outside the project folder.
# GPU=1: the GPU build of the same TensorFlow (tensorflow[and-cuda]: TensorFlow with NVIDIA's
# CUDA and cuDNN wheels, so nothing else is installed on the machine but the NVIDIA driver)
# instead of tensorflow-cpu, e.g. `make venv GPU=1` on a GPU node; `make venv` goes back.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
GPU    ?= 0
BUILD  := $(if $(filter 1,$(GPU)),gpu,cpu)
STAMP  := $(VENV)/.installed-$(BUILD)
WORKDIR ?= workdirs
PIP    := $(BIN)/python -m pip --quiet --disable-pip-version-check

.PHONY: venv demo test test-slow clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed*
ifeq ($(BUILD),gpu)
	$(PIP) uninstall -y tensorflow-cpu || true
	sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt > $(VENV)/requirements-gpu.txt
	$(PIP) install -r $(VENV)/requirements-gpu.txt -c requirements-lock.txt
else
	$(PIP) uninstall -y tensorflow || true
	$(PIP) install -r requirements.txt -c requirements-lock.txt
endif
	touch $(STAMP)

# The main job on the embedded dataset: the demo grid (configs/grids/shapes.toml), i.e. every
# pretext method and four architectures, pretraining, export and per-layer evaluation of each, the
# random-init baselines, then the report in $(WORKDIR)/grid_shapes/report/. Finished cells are
# skipped and interrupted ones resume, so run it again after an interruption. Two cells run at a
# time, each on half of the CPU cores (JOBS=1: one at a time, as on an accelerator).
JOBS ?= 2
demo: $(STAMP)
	$(BIN)/python benchmark.py --grid=configs/grids/shapes.toml --root=$(WORKDIR)/grid_shapes --jobs=$(JOBS)

# The test suite less the tests marked slow (pytest.ini); test-slow: those; CI runs both.
test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30 -m "not slow" tests

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q --durations=30 -m slow tests

clean:
	rm -rf $(VENV) .pytest_cache

# A grid of experiments (benchmark.py): every cell's training and per-layer evaluation, skipping
# finished cells, then the report in $(GRID_ROOT)/report/. `make report` only redoes the report.
GRID      ?= configs/grids/shapes.toml
GRID_ROOT ?= $(WORKDIR)/grid_$(basename $(notdir $(GRID)))
.PHONY: grid report

# EXECUTOR=slurm: every cell a SLURM job (the grid file's [slurm] section), instead of JOBS at a
# time on this machine.
EXECUTOR  ?= local
grid: $(STAMP)
	$(BIN)/python benchmark.py --grid=$(GRID) --root=$(GRID_ROOT) \
	  $(if $(filter slurm,$(EXECUTOR)),--executor=slurm,--jobs=$(JOBS))

report: $(STAMP)
	$(BIN)/python benchmark.py --report_only --root=$(GRID_ROOT)
