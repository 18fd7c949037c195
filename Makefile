# `make dev` runs the Dagster webserver and daemon locally; `make test` runs every test.
# Both create .venv and install the project into it first (again when setup.py changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PORT ?= 3000

.PHONY: install dev test lint bench clean

$(INSTALLED): setup.py pyproject.toml
	@echo "Installing agent_pipeline and its pinned dependencies into $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@# pip's output goes to a log: it is long, and this machine's pip config adds noise.
	@$(BIN)/python -m pip install --upgrade pip > $(VENV)/install.log 2>&1 \
	  && $(BIN)/python -m pip install -e '.[dev]' >> $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "pip install failed; full log: $(VENV)/install.log"; exit 1; }
	@touch $(INSTALLED)

install: $(INSTALLED)

# DAGSTER_HOME is this folder, so that dagster.yaml here is the instance file; it keeps all
# state under .dagster_home/.
dev: $(INSTALLED)
	DAGSTER_HOME=$(CURDIR) $(BIN)/dg dev -w workspace.yaml --port $(PORT)

test: $(INSTALLED)
	$(BIN)/ruff check agent_pipeline agent_pipeline_tests benchmarks
	$(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_pipeline.py

clean:
	rm -rf $(VENV) .dagster_home .agent_pipeline
