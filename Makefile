# Two commands, each sets itself up on a fresh machine (creates .venv and installs if needed):
#   make run    - the main job: POW-QMIX on the paper's matrix game (about a minute on 2 CPU cores)
#   make test   - the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e ".[test,dev]"
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) benchmarl_pow/run.py algorithm=pow_qmix task=matrix_game/nonmonotonic experiment=matrix_game

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 --dist worksteal -q --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check .
