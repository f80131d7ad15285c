# Everything installs into .venv/ inside the repo, so a fresh clone needs only python3 and make.
# PYTHONSAFEPATH: never put the repo root on sys.path, where the folder operator/ would shadow the
# stdlib module `operator`; the editable install makes the packages importable instead.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install test demo demo-containers bench manifests images images-clean clean

$(STAMP): pyproject.toml setup.py
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

# The same demo with the pods and the heal Job as podman containers of the built images.
demo-containers: install images
	$(PY) -m sandbox.demo --runtime podman --out out/containers --workdir .work/demo-containers

# Both images (docker/): docker where an engine answers, podman otherwise (installed on Debian if
# missing; storage in .work/podman); offline, a stand-in base and the local torch wheel. Prints sizes.
images:
	bash docker/images.sh build

images-clean:   # the podman containers, images and storage of this repo (several GB)
	bash docker/images.sh clean

bench: install
	$(PY) -m bench.healing --json out/healing-full.json

manifests: install   # regenerate the CRD, the chart's copy and deploy/ from operator/crd.py
	$(PY) -m shm_operator.crd --write
	PATH=$(VENV)/bin:$$PATH $(PY) charts/render.py

clean: images-clean
	rm -rf $(VENV) out .work
