#!/usr/bin/env bash
# Build the two images, with docker where an engine answers and with podman otherwise; print their
# names and sizes. `make images` runs `docker/images.sh build`.
#
#   docker/images.sh build     build both images (installs podman first on a Debian machine without it)
#   docker/images.sh build-one DOCKERFILE IMAGE   one image (the tests build broken variants)
#   docker/images.sh env       print the podman settings as `export` lines (eval them to use the
#                              same storage by hand: podman images, podman run ...)
#   docker/images.sh clean     remove the containers, images and storage that podman keeps here
#
# podman runs rootful with everything under $SELFHEAL_PODMAN_DIR (default .work/podman in the repo):
# its containers.conf (runc, cgroupfs, ulimits within this machine's hard limits), storage.conf,
# image storage and run state. Nothing is written to /etc/containers.
#
# Offline machines (no container registry, no PyTorch index): a stand-in Python base is built with
# mmdebstrap from the Debian mirror apt uses, and torch comes from a local directory holding the
# torch==2.13.0+cpu wheel (found in pip's find-links, or SELFHEAL_TORCH_WHEEL_DIR). See docker/README.md.
#
# Environment: SELFHEAL_IMAGE_TAG (0.1.0), OPERATOR_IMAGE, MODEL_SERVER_IMAGE, PYTHON_IMAGE (skip the
# base detection), SELFHEAL_ENGINE (docker|podman), SELFHEAL_TORCH_WHEEL_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

TAG=${SELFHEAL_IMAGE_TAG:-0.1.0}
OPERATOR_IMAGE=${OPERATOR_IMAGE:-ghcr.io/selfheal/operator:$TAG}
MODEL_SERVER_IMAGE=${MODEL_SERVER_IMAGE:-ghcr.io/selfheal/model-server:$TAG}
UPSTREAM_BASE=docker.io/library/python:3.11-slim-bookworm
STANDIN_BASE=localhost/selfheal/python-standin:3.11-bookworm
TORCH_WHEEL=torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
PYTORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
PODMAN_DIR=${SELFHEAL_PODMAN_DIR:-$ROOT/.work/podman}

say() { printf 'images: %s\n' "$*" >&2; }
die() { printf 'images: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- podman, configured under PODMAN_DIR

podman_config() {
  mkdir -p "$PODMAN_DIR"/{storage,tmp}
  # The run state (sockets) wants a short path: conmon's attach socket must fit in 108 bytes.
  local run_root
  run_root=/run/selfheal-podman-$(printf '%s' "$PODMAN_DIR" | sha1sum | cut -c1-12)
  cat > "$PODMAN_DIR/containers.conf" <<EOF
# Written by docker/images.sh. crun refuses this kind of machine's cgroup v1/v2 hybrid; runc works.
[containers]
# podman's defaults exceed the hard limits of some machines (then: setrlimit ... Operation not permitted)
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
tmp_dir = "$PODMAN_DIR/tmp"
EOF
  cat > "$PODMAN_DIR/storage.conf" <<EOF
# Written by docker/images.sh: this repo's own image storage, removed by docker/images.sh clean.
[storage]
driver = "overlay"
graphroot = "$PODMAN_DIR/storage"
runroot = "$run_root"
EOF
  export CONTAINERS_CONF=$PODMAN_DIR/containers.conf CONTAINERS_STORAGE_CONF=$PODMAN_DIR/storage.conf
}

ensure_podman() {
  local missing=() tool
  for tool in podman runc mmdebstrap skopeo; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null \
      || die "no docker engine answers and ${missing[*]} missing; install podman, runc, skopeo and mmdebstrap (root, Debian: apt-get install)"
    say "installing podman and its tools (missing: ${missing[*]})"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      podman buildah skopeo runc conmon fuse-overlayfs uidmap netavark aardvark-dns mmdebstrap >/dev/null
  fi
  [[ $(id -u) == 0 ]] || die "podman runs rootful here (run as root, or use docker)"
  podman_config
}

engine() {
  if [[ -n ${SELFHEAL_ENGINE:-} ]]; then echo "$SELFHEAL_ENGINE"
  elif command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then echo docker
  else echo podman
  fi
}

# ---------------------------------------------------------------- the base image

# The Debian mirror apt uses here (deb822 .sources or one-line .list), e.g. http://deb.debian.org/debian
apt_mirror() {
  local suite=$1 uri
  uri=$(awk -v s="$suite" '
      /^URIs:/ {u=$2} /^Suites:/ {for (i=2;i<=NF;i++) if ($i==s) {print u; exit}}
      /^deb / {for (i=3;i<=NF;i++) if ($i==s) {print ($2 ~ /^\[/ ? $3 : $2); exit}}' \
      /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list 2>/dev/null | head -1)
  echo "$uri"
}

build_standin_base() {
  local mirror security tar=$PODMAN_DIR/tmp/bookworm-python.tar
  mirror=$(apt_mirror bookworm); security=$(apt_mirror bookworm-security)
  mirror=${mirror:-http://deb.debian.org/debian}
  local sources=("deb $mirror bookworm main" "deb $mirror bookworm-updates main")
  [[ -n $security ]] && sources+=("deb $security bookworm-security main")
  say "no registry answers: building the stand-in base $STANDIN_BASE (Debian bookworm from $mirror)"
  # Debian's python3 is 3.11 in bookworm, like python:3.11-slim-bookworm. The host's extra CA
  # certificates go in too: a TLS-inspecting egress proxy must be trusted by pip inside the build.
  mmdebstrap --quiet --variant=minbase --mode=root \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"' \
    --customize-hook='for c in /usr/local/share/ca-certificates/*.crt; do [ -e "$c" ] && cp "$c" "$1/usr/local/share/ca-certificates/"; done; true' \
    --customize-hook='chroot "$1" update-ca-certificates >/dev/null' \
    bookworm "$tar" "${sources[@]}"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
    "$tar" "$STANDIN_BASE" >/dev/null
  rm -f "$tar"
}

# Sets BASE: PYTHON_IMAGE if given; else the upstream image if present or pullable; else the stand-in.
choose_base() {
  local tool=$1
  if [[ -n ${PYTHON_IMAGE:-} ]]; then BASE=$PYTHON_IMAGE; return; fi
  if [[ $tool == docker ]]; then BASE=$UPSTREAM_BASE; return; fi
  if podman image exists "$UPSTREAM_BASE" || timeout 60 podman pull -q "$UPSTREAM_BASE" >/dev/null 2>&1; then
    BASE=$UPSTREAM_BASE
  else
    podman image exists "$STANDIN_BASE" || build_standin_base
    BASE=$STANDIN_BASE
  fi
}

# ---------------------------------------------------------------- torch

answers() {  # url: whether it answers 2xx within 15 s (python3, which the project needs anyway)
  timeout 20 python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' "$1" >/dev/null 2>&1
}

# Sets TORCH_ARGS: nothing when the PyTorch CPU index answers; else the mounts of a local wheel dir
# and a pip.conf that finds torch there and everything else on PyPI.
choose_torch() {
  TORCH_ARGS=()
  if [[ -z ${SELFHEAL_TORCH_WHEEL_DIR:-} ]] && answers "$PYTORCH_CPU_INDEX/torch/"; then
    return
  fi
  local dir=${SELFHEAL_TORCH_WHEEL_DIR:-} candidates
  if [[ -z $dir ]]; then
    candidates=$( { pip3 config list 2>/dev/null | sed -n "s/.*find-links='\(.*\)'/\1/p" | tr ' ' '\n'; echo /opt/wheels; } )
    for d in $candidates; do [[ -f $d/$TORCH_WHEEL ]] && { dir=$d; break; }; done
  fi
  [[ -n $dir && -f $dir/$TORCH_WHEEL ]] \
    || die "the PyTorch CPU index ($PYTORCH_CPU_INDEX) does not answer and no directory holds $TORCH_WHEEL; set SELFHEAL_TORCH_WHEEL_DIR"
  dir=$(cd "$dir" && pwd)
  say "the PyTorch CPU index does not answer: torch from $dir/$TORCH_WHEEL"
  cat > "$PODMAN_DIR/pip.conf" <<EOF
[global]
find-links = $dir
extra-index-url = https://pypi.org/simple
cert = /etc/ssl/certs/ca-certificates.crt
EOF
  TORCH_ARGS=(--build-arg "TORCH_INDEX_URL=https://pypi.org/simple"
              -v "$dir:$dir:ro" -v "$PODMAN_DIR/pip.conf:/etc/pip.conf:ro")
}

# ---------------------------------------------------------------- build

build_one() {  # tool dockerfile image (the dockerfile's ignore file is <dockerfile>.dockerignore)
  local tool=$1 dockerfile=$2 image=$3
  say "building $image from $dockerfile"
  if [[ $tool == docker ]]; then
    DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "$image" --build-arg "PYTHON_IMAGE=$BASE" .
  else
    podman build --network host --layers --ignorefile "$dockerfile.dockerignore" \
      -f "$dockerfile" -t "$image" --build-arg "PYTHON_IMAGE=$BASE" "${TORCH_ARGS[@]}" .
  fi
}

size_of() {  # tool image -> bytes
  "$1" image inspect --format '{{.Size}}' "$2"
}

cmd_build() {
  local tool start
  tool=$(engine)
  [[ $tool == podman ]] && ensure_podman
  start=$(date +%s)
  choose_base "$tool"
  choose_torch
  [[ $tool == docker && ${#TORCH_ARGS[@]} -gt 0 ]] \
    && die "docker build cannot mount the local torch wheel; build offline with SELFHEAL_ENGINE=podman"
  build_one "$tool" docker/operator.Dockerfile "$OPERATOR_IMAGE"
  build_one "$tool" docker/model-server.Dockerfile "$MODEL_SERVER_IMAGE"
  local seconds=$(( $(date +%s) - start ))
  printf '%-45s %s\n' IMAGE SIZE
  for image in "$OPERATOR_IMAGE" "$MODEL_SERVER_IMAGE"; do
    printf '%-45s %s MB\n' "$image" "$(( $(size_of "$tool" "$image") / 1000000 ))"
  done
  printf 'built with %s on base %s in %d s\n' "$tool" "$BASE" "$seconds"
}

# One Dockerfile (any path; its ignore file beside it) on the same base and torch as `build`: the tests
# build broken variants with it, to see that the build fails.
cmd_build_one() {
  [[ $# == 2 && -f $1 && -f $1.dockerignore ]] || die "usage: docker/images.sh build-one DOCKERFILE IMAGE (with DOCKERFILE.dockerignore beside it)"
  local tool
  tool=$(engine)
  [[ $tool == podman ]] && ensure_podman
  choose_base "$tool"
  choose_torch
  build_one "$tool" "$1" "$2"
}

cmd_clean() {
  [[ -f $PODMAN_DIR/storage.conf ]] || { say "nothing to clean at $PODMAN_DIR"; return; }
  podman_config
  podman rm --all --force >/dev/null 2>&1 || true
  podman rmi --all --force >/dev/null 2>&1 || true
  local run_root
  run_root=$(sed -n 's/^runroot = "\(.*\)"/\1/p' "$PODMAN_DIR/storage.conf")
  rm -rf "$PODMAN_DIR" "${run_root:?}"
  say "removed $PODMAN_DIR"
}

case ${1:-build} in
  build) cmd_build ;;
  build-one) shift; cmd_build_one "$@" ;;
  env) podman_config; printf 'export CONTAINERS_CONF=%q CONTAINERS_STORAGE_CONF=%q\n' "$CONTAINERS_CONF" "$CONTAINERS_STORAGE_CONF" ;;
  clean) cmd_clean ;;
  *) die "unknown command ${1}; use build, env or clean" ;;
esac
