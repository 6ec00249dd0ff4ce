# All set-up happens here: the first target that needs Python creates .venv and installs the pinned
# dependencies into it. Nothing is installed outside the project folder.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
WORKDIR ?= workdirs

.PHONY: venv demo test clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-lock.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements-lock.txt
	touch $(STAMP)

# The main job on the embedded dataset: rotation pretraining (with pretext evaluation and export),
# then per-layer linear evaluation of the export and of the random-init baseline.
demo: $(STAMP)
	$(BIN)/python train_and_eval.py --flagfile=configs/rotation/shapes.flags \
	    --workdir=$(WORKDIR)/rotation_shapes
	$(BIN)/python train_and_eval.py --flagfile=configs/evaluation/shapes.flags \
	    --hub_module=$(WORKDIR)/rotation_shapes/export --workdir=$(WORKDIR)/rotation_shapes/linear_eval
	$(BIN)/python train_and_eval.py --flagfile=configs/evaluation/shapes.flags \
	    --hub_module=random_init --architecture=resnet50 --filters_factor=1 \
	    --eval_preprocessing=resize,-1_to_1 --resize_size=32 --workdir=$(WORKDIR)/random_init_shapes

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache

# A grid of experiments (benchmark.py): every cell's training and per-layer evaluation, skipping
# finished cells, then the report in $(GRID_ROOT)/report/. `make report` only redoes the report.
GRID      ?= configs/grids/shapes.toml
GRID_ROOT ?= $(WORKDIR)/grid_$(basename $(notdir $(GRID)))
.PHONY: grid report

grid: $(STAMP)
	$(BIN)/python benchmark.py --grid=$(GRID) --root=$(GRID_ROOT)

report: $(STAMP)
	$(BIN)/python benchmark.py --report_only --root=$(GRID_ROOT)
