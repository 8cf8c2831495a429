# The two commands of the README: `make demo` (the main job, end to end) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch, installed before the project so that the `train` extra's range does not
# pull a multi-GB CUDA build. Override on a GPU machine: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: install demo test test-fast lint clean browser

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[train,serve,api,dev,bench]'
	touch $@

demo: install
	$(BIN)/dqe-cir demo $(DEMO_ARGS)

test: install browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# tests/test_browser.py drives the system Chromium through chromedriver (no browser download at run time)
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "warning: not root; install chromium and chromium-driver for tests/test_browser.py (skipped)" >&2; fi

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs exports .pytest_cache
