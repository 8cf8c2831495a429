#!/usr/bin/env bash
# The images, built the same way by `make images`, `make base-image` and tests/test_containers.py.
#
#   docker/build.sh images        worker (serve), api (serve,api) and train images, tagged with pyproject's version
#   docker/build.sh base-image    a Python 3.11 base made from Debian packages, for hosts that reach no image registry
#   docker/build.sh engine        print the engine command (docker, or podman with its runtime)
#   docker/build.sh podman-limits as root: let podman start containers where the hard RLIMIT_NOFILE is low
#
# Environment (the Makefile passes its variables of the same names):
#   ENGINE          docker | podman (default: docker when its daemon answers, else podman)
#   BASE            the base image of all three (default: REGISTRY_BASE when the engine has it or can pull it,
#                   else LOCAL_BASE, made by `base-image` when missing)
#   REGISTRY_BASE   docker.io/library/python:3.11-slim
#   LOCAL_BASE      dqe-cir-base:bookworm
#   IMAGE_PREFIX    dqe-cir (images: dqe-cir-worker, dqe-cir-api, dqe-cir-train)
#   TRAIN_TORCH_SPEC  torch==2.13.0+cpu (the CPU build: a plain `torch` pulls a multi-GB CUDA build)
#   TORCH_INDEX     https://download.pytorch.org/whl/cpu (where TRAIN_TORCH_SPEC comes from)
#   TORCH_WHEELS    a folder holding the torch wheel, mounted read-only into the train build instead of
#                   TORCH_INDEX (podman only: docker build mounts nothing). Default: the first folder of pip's
#                   find-links (PIP_FIND_LINKS, `pip config`) that holds TRAIN_TORCH_SPEC's wheel for Python 3.11.
#   IMAGES          which images to build (default: "worker api train")
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
PREFIX=${IMAGE_PREFIX:-dqe-cir}
REGISTRY_BASE=${REGISTRY_BASE:-docker.io/library/python:3.11-slim}
LOCAL_BASE=${LOCAL_BASE:-dqe-cir-base:bookworm}
TRAIN_TORCH_SPEC=${TRAIN_TORCH_SPEC:-torch==2.13.0+cpu}
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA_BUNDLE=${HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

die() { echo "error: $*" >&2; exit 2; }

# The engine as an argument list: podman gets runc when it is installed, because Debian 12's default runtime
# (crun) refuses to start containers on hosts with cgroups in hybrid mode.
engine_cmd() {
  local engine=${ENGINE:-}
  if [ -z "$engine" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
    elif command -v podman >/dev/null 2>&1; then engine=podman
    else die "no container engine: start the docker daemon, or install podman (as root: make containers)"; fi
  fi
  case "$engine" in
    docker) ENG=(docker) ;;
    podman)
      ENG=(podman)
      if [ -n "${PODMAN_RUNTIME:-}" ]; then ENG+=(--runtime "$PODMAN_RUNTIME")
      elif command -v runc >/dev/null 2>&1; then ENG+=(--runtime runc); fi ;;
    *) die "ENGINE=$engine: use docker or podman" ;;
  esac
}

has_image() { "${ENG[@]}" image inspect "$1" >/dev/null 2>&1; }

podman_limits() {
  # podman's default ulimits ask for nofile=1048576, which a container cannot get where the hard limit is lower
  # and the sandbox cannot raise it ("setrlimit RLIMIT_NOFILE: Operation not permitted"); an empty list keeps
  # the host's limits. Written only where it is needed, and only once.
  command -v podman >/dev/null 2>&1 || return 0
  [ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -ge 1048576 ] && return 0
  local conf=/etc/containers/containers.conf.d/50-dqe-cir-ulimits.conf
  grep -qs '^default_ulimits' /etc/containers/containers.conf /etc/containers/containers.conf.d/*.conf && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "warning: podman will fail with 'setrlimit RLIMIT_NOFILE': as root, put 'default_ulimits = []' under" \
         "[containers] in /etc/containers/containers.conf" >&2
    return 0
  fi
  mkdir -p "$(dirname "$conf")"
  printf '# the host hard limit on open files is below podman default of 1048576 (written by make containers)\n[containers]\ndefault_ulimits = []\n' > "$conf"
  echo "[containers] wrote $conf (default_ulimits = [])"
}

base_image() {
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is missing: apt-get install mmdebstrap (make containers does it as root)"
  [ "$(id -u)" = 0 ] || die "make base-image runs mmdebstrap as root (it makes device nodes and chroots)"
  [ -f "$HOST_CA_BUNDLE" ] || die "HOST_CA_BUNDLE=$HOST_CA_BUNDLE is not a file"
  local tmp start
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  start=$(date +%s)
  # --variant=apt: Essential packages + apt, then Python and what the images need (passwd: useradd; tzdata:
  # zoneinfo, which kombu reads at import: Celery does not start without it).
  # The host's CA bundle goes in so that pip inside the builds trusts what the host trusts (a proxy's CA).
  # Documentation and locales are left out; a venv on PATH makes `pip install` work as in python:3.11-slim
  # (Debian's own Python refuses system-wide pip installs, PEP 668).
  mmdebstrap --quiet --variant=apt --include=python3,python3-venv,python3-pip,ca-certificates,passwd,tzdata \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook="upload $HOST_CA_BUNDLE /etc/ssl/certs/ca-certificates.crt" \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
    bookworm "$tmp/base.tar" "$DEBIAN_MIRROR" </dev/null
  local quiet=(); [ "${ENG[0]}" = podman ] && quiet=(--quiet)  # docker import has no --quiet
  "${ENG[@]}" import "${quiet[@]}" \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV VIRTUAL_ENV=/opt/venv' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tmp/base.tar" "$LOCAL_BASE" >/dev/null
  echo "[base-image] $LOCAL_BASE (Debian bookworm, $("${ENG[@]}" run --rm "$LOCAL_BASE" python --version))" \
       "built in $(( $(date +%s) - start )) s, $(size_of "$LOCAL_BASE")"
}

size_of() { "${ENG[@]}" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

pick_base() {
  if [ -n "${BASE:-}" ]; then echo "$BASE"; return; fi
  if has_image "$REGISTRY_BASE" || "${ENG[@]}" pull -q "$REGISTRY_BASE" >/dev/null 2>&1; then echo "$REGISTRY_BASE"; return; fi
  echo "[images] $REGISTRY_BASE cannot be pulled; using $LOCAL_BASE (make base-image)" >&2
  has_image "$LOCAL_BASE" || base_image >&2
  echo "$LOCAL_BASE"
}

# The first pip find-links folder that holds the very wheel TRAIN_TORCH_SPEC names (torch==VERSION) for CPython
# 3.11, the bases' Python; none for any other spec, which then comes from TORCH_INDEX.
find_torch_wheels() {
  local links dir version
  case "$TRAIN_TORCH_SPEC" in torch==*) version=${TRAIN_TORCH_SPEC#torch==} ;; *) return 0 ;; esac
  links="${PIP_FIND_LINKS:-} $(python3 -m pip config get global.find-links 2>/dev/null || true)"
  for dir in $links; do
    dir=${dir#file://}
    if compgen -G "$dir/torch-$version-cp311-*.whl" >/dev/null; then echo "$dir"; return; fi
  done
}

images() {
  local base wheels name start
  base=$(pick_base)
  local args=(build --network host --build-arg "BASE=$base")
  for name in ${IMAGES:-worker api train}; do
    start=$(date +%s)
    case "$name" in
      worker) "${ENG[@]}" "${args[@]}" -f docker/serve.Dockerfile --build-arg EXTRA=serve -t "$PREFIX-worker:$VERSION" . ;;
      api) "${ENG[@]}" "${args[@]}" -f docker/serve.Dockerfile --build-arg EXTRA=serve,api -t "$PREFIX-api:$VERSION" . ;;
      train)
        local extra=(--build-arg "TORCH_SPEC=$TRAIN_TORCH_SPEC" --build-arg "TORCH_INDEX=$TORCH_INDEX")
        wheels=${TORCH_WHEELS-$(find_torch_wheels)}
        if [ -n "$wheels" ]; then
          [ "${ENG[0]}" = podman ] || die "TORCH_WHEELS=$wheels needs podman (docker build mounts no folder); unset it"
          extra+=(-v "$(realpath "$wheels"):/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels)
        fi
        "${ENG[@]}" "${args[@]}" -f docker/train.Dockerfile "${extra[@]}" -t "$PREFIX-train:$VERSION" . ;;
      *) die "IMAGES: unknown image $name (worker, api, train)" ;;
    esac
    echo "[images] $PREFIX-$name:$VERSION from $base: $(( $(date +%s) - start )) s, $(size_of "$PREFIX-$name:$VERSION")"
  done
}

case "${1:-}" in
  images) engine_cmd; images ;;
  base-image) engine_cmd; base_image ;;
  engine) engine_cmd; echo "${ENG[*]}" ;;
  podman-limits) podman_limits ;;
  *) die "usage: docker/build.sh images | base-image | engine | podman-limits" ;;
esac
