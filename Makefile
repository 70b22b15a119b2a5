# Everything installs into .venv from a bare Python 3; every target sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := vocwatch tests $(wildcard bench)

.PHONY: demo test test-fleet alerts-test contract-test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vocwatch demo

# The writer tests copy with rsync (temp file + rename, and --inplace); CI is a bare Debian without it.
test: $(STAMP)
	command -v rsync >/dev/null || { apt-get update -qq && apt-get install -y -qq rsync; } || echo "rsync is missing and could not be installed (not root?): its writer tests skip"
	$(BIN)/python -m pytest -q -m "not fleet"

# The fleet tests (marker "fleet"): real daemons on one PostgreSQL ledger, on a throwaway cluster that
# tests/support/pg.py initdb's from Debian's server binaries (installed here when missing, as root).
test-fleet: $(STAMP)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || echo "PostgreSQL is missing and could not be installed (not root?): the fleet tests skip"
	$(BIN)/python -m pytest -q -m fleet

# The alert rules: promtool check + its unit tests. promtool comes from Debian's prometheus package, unpacked
# into .venv (apt-get download + dpkg-deb -x: no server started, no user made, no dependency pulled in).
PROMTOOL ?= $(shell command -v promtool || echo $(VENV)/prometheus/usr/bin/promtool)
alerts-test:
	test -x $(PROMTOOL) || { mkdir -p $(VENV)/prometheus && cd $(VENV)/prometheus && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus; }; } && dpkg-deb -x prometheus_*.deb . && rm prometheus_*.deb; }
	$(PROMTOOL) check rules deploy/prometheus/vocwatch.rules.yml
	cd deploy/prometheus && $(abspath $(PROMTOOL)) test rules vocwatch.rules.test.yml
# Schemathesis against a running `vocwatch simulate` with Crescendo's contract (tests/contract/). Its own venv:
# Schemathesis brings a pytest plugin that `make test` must not load. About a minute (--max-time bounds it).
CONTRACT_VENV := .venv-contract
CONTRACT ?= ../shared/crescendo-voc-api.yml

$(CONTRACT_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(CONTRACT_VENV)
	$(CONTRACT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CONTRACT_VENV)/bin/python -m pip install --quiet -e '.[contract]'
	touch $@

contract-test: $(CONTRACT_VENV)/.installed
	$(CONTRACT_VENV)/bin/python tests/contract/run_contract.py --schema $(CONTRACT)

lint: $(STAMP)
	$(BIN)/ruff check $(CODE)
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(CONTRACT_VENV) .pytest_cache .mypy_cache .ruff_cache
