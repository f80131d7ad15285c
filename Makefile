# Everything installs into .venv/ inside the repo, so a fresh clone needs only python3 and make.
# PYTHONSAFEPATH: never put the repo root on sys.path, where the folder operator/ would shadow the
# stdlib module `operator`; the editable install makes the packages importable instead.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m bench.healing --quick --json out/healing-quick.json

bench: install
	$(PY) -m bench.healing --json out/healing-full.json

clean:
	rm -rf $(VENV) out .work
