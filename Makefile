# Everything installs into .venv from a bare Python 3; every target sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := vocwatch tests $(wildcard bench)

.PHONY: demo test test-fleet systemd-test lint format bench clean

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
	$(BIN)/python -m pytest -q -m "not fleet and not systemd"

# The fleet tests (marker "fleet"): real daemons on one PostgreSQL ledger, on a throwaway cluster that
# tests/support/pg.py initdb's from Debian's server binaries (installed here when missing, as root).
test-fleet: $(STAMP)
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || echo "PostgreSQL is missing and could not be installed (not root?): the fleet tests skip"
	$(BIN)/python -m pytest -q -m fleet

# The service's life under a real systemd (marker "systemd"): a Debian 12 root debootstrapped once into
# $(SYSTEMD_CACHE) (rebuilt when tests/support/rootfs.py's package list changes), a fresh copy booted per run
# with systemd-nspawn, the built .deb installed in it. Root only; fails (never skips) where containers are refused.
SYSTEMD_CACHE ?= /var/cache/vocwatch-systemd-test
systemd-test: $(STAMP)
	@test "$$(id -u)" = 0 || { echo "make systemd-test must run as root (debootstrap, systemd-nspawn)" >&2; exit 1; }
	command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v dpkg-deb >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container dpkg-dev; }
	VOCWATCH_SYSTEMD_CACHE=$(SYSTEMD_CACHE) $(BIN)/python -m pytest -q -m systemd tests/test_systemd_service.py

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
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
