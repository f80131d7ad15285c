# syntax=docker/dockerfile:1
# The model-server image: TorchServe (Java 17 frontend + Python workers) with the selfheal handler, CPU
# torch. The operator runs it for the serving pods (`python -m model_handler.launcher serve ...`) and
# for the healing Jobs (`python -m model_handler.heal ...`). Build from the repository root:
#   docker build -f docker/model-server.Dockerfile -t ghcr.io/selfheal/model-server:0.1.0 .
# bookworm, not the moving `3.11-slim` tag: trixie no longer ships OpenJDK 17.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/selfheal
ENV PATH=/opt/selfheal/bin:$PATH
# The CPU build first, so `torch==2.13.0` from pyproject.toml is satisfied and no CUDA wheel is pulled.
RUN pip install torch==2.13.0+cpu --index-url ${TORCH_INDEX_URL}
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY model_handler model_handler
# Only the packages this image runs (setup.py refuses a named package that is not here).
ENV SELFHEAL_PACKAGES=model_handler
RUN pip install ".[serve]"
RUN python -P -c "import model_handler.handler, model_handler.heal, model_handler.launcher"

FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 selfheal \
 && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/selfheal --shell /usr/sbin/nologin selfheal
COPY --from=build /opt/selfheal /opt/selfheal
# The launcher gives each TorchServe its own work dir under $TMPDIR (config, logs, worker sockets).
ENV PATH=/opt/selfheal/bin:$PATH PYTHONUNBUFFERED=1 HOME=/home/selfheal TMPDIR=/tmp
WORKDIR /home/selfheal
USER 10001:10001
# 8080 inference, 8081 management (describe API with the drift status), 8082 metrics.
EXPOSE 8080 8081 8082
ENTRYPOINT ["python"]
CMD ["-m", "model_handler.launcher", "--help"]
