# Everything installs into .venv/ inside the repo, so a fresh clone needs only python3 and make.
# PYTHONSAFEPATH: never put the repo root on sys.path, where the folder operator/ would shadow the
# stdlib module `operator`; the editable install makes the packages importable instead.
export PYTHONSAFEPATH := 1
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install prometheus test demo demo-containers bench manifests images images-clean clean

$(STAMP): pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m sandbox.tools install    # helm (and kubectl if missing) into .venv/bin
	touch $(STAMP)

install: $(STAMP)

# Debian's prometheus and promtool for tests/operator/test_prometheus.py (the chart's alert rules and
# dashboard queries against a real Prometheus). Installed with apt as root; otherwise that test skips.
# policy-rc.d-less hosts would start the packaged service: it is stopped again (the test runs its own).
prometheus:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing prometheus (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    prometheus >/dev/null && { invoke-rc.d prometheus stop >/dev/null 2>&1 || true; }; \
	else echo "prometheus/promtool missing and not root: tests/operator/test_prometheus.py will skip"; fi

test: install prometheus
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: install
	$(PY) -m examples.demo --out out

# The same demo with the pods and the heal Job as podman containers of the built images.
demo-containers: install images
	$(PY) -m examples.demo --runtime podman --out out/containers --workdir .work/demo-containers

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
