# syntax=docker/dockerfile:1
# The selfheal operator image: Kopf + aiohttp + the numpy part of model_handler it reads
# adapters, rules and drift sketches with. No torch: the controller never imports it (a build step
# checks both). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/selfheal/operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/selfheal
ENV PATH=/opt/selfheal/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY operator operator
COPY model_handler model_handler
# Only the packages this image runs (setup.py refuses a named package that is not here).
ENV SELFHEAL_PACKAGES=shm_operator,model_handler
RUN pip install ".[operator]"
RUN python -P -c "import shm_operator.__main__, model_handler.registry"
RUN python -P -c "import importlib.util, sys, shm_operator.handlers; \
assert 'torch' not in sys.modules, 'the operator imports torch'; \
assert importlib.util.find_spec('torch') is None, 'torch is installed in the operator image'"

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 selfheal \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin selfheal
COPY --from=build /opt/selfheal /opt/selfheal
# Runs with a read-only root filesystem (the chart mounts an emptyDir on /tmp): no bytecode caches.
ENV PATH=/opt/selfheal/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SELFHEAL_METRICS_PORT=9090
WORKDIR /tmp
USER 10001:10001
# 8080: Kopf's liveness endpoint, 9090: Prometheus metrics.
EXPOSE 8080 9090
ENTRYPOINT ["python", "-m", "shm_operator"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
