# The two commands a newcomer needs: `make run` (the default task end to end) and `make test`.
# Both install from uv.lock (exact versions and hashes, Python 3.11 to 3.13) with uv, which is
# itself installed into the venv from PyPI. `make lock` re-resolves uv.lock from pyproject.toml.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
UV_STAMP := $(VENV)/.uv-$(UV_VERSION)
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
# What `macflow quickstart` needs (mpe/spread), and everything the tests use (no GPU extras).
RUN_EXTRAS := jaxmarl
TEST_EXTRAS := dev jaxmarl mamujoco ray analysis vault hdf5 tensorboard deploy
# Exact versions from uv.lock (--locked fails if it is out of date with pyproject.toml); packages
# outside the chosen extras stay (--inexact), so the slim `make run` venv grows into the test one.
UV := UV_PROJECT_ENVIRONMENT=$(VENV) UV_PYTHON_DOWNLOADS=never $(BIN)/uv
SYNC := $(UV) sync --locked --inexact

.PHONY: run test lint format install install-run lock clean

run: $(RUN_STAMP)
	$(BIN)/macflow quickstart

test: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(TEST_STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

install: $(TEST_STAMP)

install-run: $(RUN_STAMP)

# Re-resolve every dependency to the newest versions the ranges of pyproject.toml allow.
lock: $(UV_STAMP)
	$(UV) lock --upgrade

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV_STAMP): | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	touch $@

# Re-install whenever pyproject.toml or uv.lock changes (the stamp is older than them).
$(RUN_STAMP): pyproject.toml uv.lock $(UV_STAMP)
	$(SYNC) $(addprefix --extra ,$(RUN_EXTRAS))
	touch $@

$(TEST_STAMP): pyproject.toml uv.lock $(UV_STAMP)
	$(SYNC) $(addprefix --extra ,$(TEST_EXTRAS))
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
