# `make dev` runs the Dagster webserver and daemon locally; `make test` runs every test.
# Both create .venv and install the project into it first (again when setup.py changes).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PORT ?= 3000
# The browser the email-rendering and UI tests drive; Playwright's own download is not used.
CHROMIUM ?= /usr/bin/chromium
export CHROMIUM

.PHONY: install system-packages dev test lint bench clean constraints upgrade-check

$(INSTALLED): setup.py pyproject.toml constraints.txt
	@echo "Installing agent_pipeline and its pinned dependencies into $(VENV) ..."
	@$(PYTHON) -m venv $(VENV)
	@# pip's output goes to a log: it is long, and this machine's pip config adds noise.
	@$(BIN)/python -m pip install --upgrade pip > $(VENV)/install.log 2>&1 \
	  && $(BIN)/python -m pip install -c constraints.txt -e '.[dev]' >> $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "pip install failed; full log: $(VENV)/install.log"; exit 1; }
	@touch $(INSTALLED)

install: $(INSTALLED)

# Debian packages the tests use: chromium for the browser tests, docker-compose to validate
# docker-compose.yml. Installed when missing, as root where apt-get is; elsewhere Chromium is
# required (say where with CHROMIUM=...) and the compose check is skipped with its reason.
system-packages:
	@if [ ! -x "$(CHROMIUM)" ] || ! command -v docker-compose > /dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
	    echo "Installing Debian's chromium and docker-compose for the tests ..."; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      chromium docker-compose > /dev/null || exit 1; \
	  elif [ ! -x "$(CHROMIUM)" ]; then \
	    echo "The browser tests need Chromium at $(CHROMIUM): install Debian's chromium" \
	      "package, or run make test CHROMIUM=/path/to/chromium"; exit 1; \
	  fi; \
	fi

dev: $(INSTALLED)
	DAGSTER_HOME=$(CURDIR) $(BIN)/python deploy/dev.py --port $(PORT)

test: $(INSTALLED) system-packages
	$(BIN)/ruff check agent_pipeline agent_pipeline_tests benchmarks deploy
	$(BIN)/pytest -m "not slow"
	$(BIN)/pytest -m slow -n 0
	@# The daemon tests again, on Dagster's stock instance parts (deploy/stock-parts.yaml).
	$(BIN)/pytest -m slow -n 0 --engine-parts=stock \
	  agent_pipeline_tests/test_local_deployment.py agent_pipeline_tests/test_production_topology.py

bench: $(INSTALLED)
	$(BIN)/python benchmarks/bench_pipeline.py

# constraints.txt anew: every dependency of every extra, resolved afresh from setup.py in a
# throwaway venv. Run it after changing setup.py (or to take upgrades), and commit both.
CONSTRAINTS_VENV := .constraints-venv
constraints:
	rm -rf $(CONSTRAINTS_VENV) && $(PYTHON) -m venv $(CONSTRAINTS_VENV)
	$(CONSTRAINTS_VENV)/bin/python -m pip install -q --upgrade pip
	$(CONSTRAINTS_VENV)/bin/python -m pip install -q '.[dev,k8s]'
	{ sed -n '/^#/p' constraints.txt; \
	  $(CONSTRAINTS_VENV)/bin/python -m pip freeze --exclude agent_pipeline; } > constraints.new
	mv constraints.new constraints.txt && rm -rf $(CONSTRAINTS_VENV) build

clean:
	rm -rf $(VENV) .dagster_home .agent_pipeline

# Would the newest Dagster core break our engine parts? In a throwaway venv, the pinned project
# with the newest dagster, dagster-webserver and dagster-graphql over it: pip check, the pins of
# the private Dagster surface the parts rely on, the parts' tests; a summary of what broke.
# Run it before moving the Dagster pins, and now and then (docs/testing.md).
upgrade-check:
	PYTHON=$(PYTHON) UPGRADE_VENV=.upgrade-venv deploy/upgrade_check.sh
