# The two commands of the README: `make demo` (the main job, end to end) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU build of torch, installed before the project so that the `train` extra's range does not
# pull a multi-GB CUDA build. Override on a GPU machine: make TORCH_SPEC=torch install
TORCH_SPEC ?= torch==2.13.0
DEMO_ARGS ?=

.PHONY: install demo test test-fast lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e '.[train,serve,dev]'
	touch $@

demo: install
	$(BIN)/dqe-cir demo $(DEMO_ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) runs exports .pytest_cache
