# The two commands of the README: `make demo` (the main job, end to end) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch, installed before the project so that the `train` extra's range does not
# pull a multi-GB CUDA build. Override on a GPU machine: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: install demo test test-fast lint clean browser containers images base-image

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[train,serve,api,dev,bench]'
	touch $@

demo: install
	$(BIN)/dqe-cir demo $(DEMO_ARGS)

test: install browser containers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# tests/test_browser.py drives the system Chromium through chromedriver (no browser download at run time)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "warning: not root; install chromium and chromium-driver for tests/test_browser.py (skipped)" >&2; fi

# tests/test_containers.py builds the images (`make images`) and starts them: a container engine that runs here.
# docker when its daemon answers; otherwise, as root on Debian/Ubuntu, podman with runc (Debian 12's default
# crun refuses "cgroups in hybrid mode"), mmdebstrap (`make base-image`) and podman-compose (the compose check).
containers:
	@if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then :; \
	elif command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1 \
	  && command -v podman-compose >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc mmdebstrap podman-compose \
	    >/dev/null; \
	else echo "warning: no docker daemon and not root; install podman, runc, mmdebstrap and podman-compose" \
	  "for tests/test_containers.py (skipped)" >&2; fi
	@docker/build.sh podman-limits

# The worker (serve), api (serve,api) and train images, tagged with pyproject.toml's version (docker/build.sh).
# BASE=IMAGE overrides the base of all three; without it: python:3.11-slim where the engine has it or can pull
# it, else the Debian-made base of `make base-image` (built on first use; for hosts that reach no registry).
BASE ?=
IMAGES ?= worker api train
TRAIN_TORCH_SPEC ?= torch==2.13.0+cpu
images:
	BASE="$(BASE)" IMAGES="$(IMAGES)" TRAIN_TORCH_SPEC="$(TRAIN_TORCH_SPEC)" docker/build.sh images

base-image:
	docker/build.sh base-image

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs exports .pytest_cache
