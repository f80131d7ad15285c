# Everything installs into .venv/ inside the repo, so a fresh clone needs only python3 and make.
# PYTHONSAFEPATH: never put the repo root on sys.path, where the folder operator/ would shadow the
# stdlib module `operator`; the editable install makes the packages importable instead.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo bench manifests clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m sandbox.tools install    # helm (and kubectl if missing) into .venv/bin
	touch $(STAMP)

install: $(STAMP)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m sandbox.demo --out out

bench: install
	$(PY) -m bench.healing --json out/healing-full.json

manifests: install   # regenerate the CRD, the chart's copy and deploy/ from operator/crd.py
	$(PY) -m shm_operator.crd --write
	PATH=$(VENV)/bin:$$PATH $(PY) charts/render.py

clean:
	rm -rf $(VENV) out .work
