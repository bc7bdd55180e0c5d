# Two entry points: `make train` and `make test`. Each creates .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/spread_mappo.yaml
ARGS ?=

.PHONY: train test notebook clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned and installed first so that no other requirement pulls a CUDA build.
$(VENV)/.installed: $(PY) setup.cfg pyproject.toml
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[test]"
	touch $@

train: $(VENV)/.installed
	$(VENV)/bin/marl train $(CONFIG) $(ARGS)

test: $(VENV)/.installed-test
	$(PY) -m pytest -q -m "not slow" $(ARGS)

$(VENV)/.installed-notebook: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[notebook]"
	touch $@

# Opens notebooks/ in Jupyter; `make notebook ARGS=--execute` runs credit_analysis.ipynb headless instead.
NOTEBOOK ?= notebooks/credit_analysis.ipynb
notebook: $(VENV)/.installed-notebook
ifeq ($(ARGS),--execute)
	$(VENV)/bin/jupyter nbconvert --to notebook --execute --output-dir runs/notebooks $(NOTEBOOK)
else
	$(VENV)/bin/jupyter notebook $(NOTEBOOK) $(ARGS)
endif

clean:
	rm -rf $(VENV) runs
