# Everything installs into .venv from a bare Python 3; every target sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := vocwatch tests $(wildcard bench)

.PHONY: demo test test-fleet alerts-test contract-test systemd-test lint format bench clean deb deb-test

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
	command -v groff >/dev/null || { apt-get update -qq && apt-get install -y -qq groff-base; } || echo "groff is missing and could not be installed (not root?): the man page test fails"
	$(BIN)/python -m pytest -q -n auto -m "not fleet and not systemd and not deb"

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

# The service's life under a real systemd (marker "systemd"): a Debian 12 root debootstrapped once into
# $(SYSTEMD_CACHE) (rebuilt when tests/support/rootfs.py's package list changes), a fresh copy booted per run
# with systemd-nspawn, the built .deb installed in it. Root only; fails (never skips) where containers are refused.
SYSTEMD_CACHE ?= /var/cache/vocwatch-systemd-test
systemd-test: $(STAMP) deb
	@test "$$(id -u)" = 0 || { echo "make systemd-test must run as root (debootstrap, systemd-nspawn)" >&2; exit 1; }
	command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null && command -v dpkg-deb >/dev/null \
		|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap systemd-container dpkg-dev; }
	VOCWATCH_SYSTEMD_CACHE=$(SYSTEMD_CACHE) VOCWATCH_DEB=$(DEB_FILE) \
	    $(BIN)/python -m pytest -q -m systemd tests/test_systemd_service.py

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

# The Debian package, dist/vocwatch_<version>-<revision>_<arch>.deb (README: "Install as a service").
# A newer package without editing a file: make deb DEB_REVISION=2 (or DEB_VERSION=0.1.0-2~test1).
# First a wheelhouse for Debian 12's /usr/bin/python3 (every runtime dependency, the build backend, the doc
# generators), then dpkg-buildpackage with dh-virtualenv on a clean copy of the tracked files, pip offline.
DEB_REVISION ?= 1
DEB_VERSION ?= $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' vocwatch/__init__.py)-$(DEB_REVISION)
DEB_BUILD := build/deb
DEB_DEPS := dh-virtualenv debhelper python3-venv python3-pip dpkg-dev build-essential
DEB_FILE = dist/vocwatch_$(DEB_VERSION)_$(shell dpkg --print-architecture 2>/dev/null || echo amd64).deb
# Built again only when a tracked file changed: make deb-test and make systemd-test in one CI run share one build.
deb: $(DEB_FILE)
$(DEB_FILE): $(wildcard $(shell git ls-files 2>/dev/null))
	dpkg -s $(DEB_DEPS) >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_DEPS); } || { echo "make deb: needs $(DEB_DEPS) (apt-get install them as root)" >&2; exit 1; }
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)/src dist
	git ls-files -z --cached --others --exclude-standard | xargs -0 sh -c 'for f; do [ -e "$$f" ] || [ -L "$$f" ] && printf "%s\0" "$$f"; done' _ | tar --null -T - -cf - | tar -xf - -C $(DEB_BUILD)/src
	/usr/bin/python3 -m venv $(DEB_BUILD)/pip
	$(DEB_BUILD)/pip/bin/python -m pip download --quiet --disable-pip-version-check --dest $(DEB_BUILD)/wheelhouse \
	    "./$(DEB_BUILD)/src[package]" "setuptools>=77"
	# A dependency that comes only as an sdist (argparse-manpage) is built into a wheel now, while the build
	# backend it needs can still be fetched: the wheelhouse is then all wheels, and the package build offline.
	set -e; for sdist in $(DEB_BUILD)/wheelhouse/*.tar.gz; do [ -e "$$sdist" ] || continue; \
	    $(DEB_BUILD)/pip/bin/python -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir $(DEB_BUILD)/wheelhouse "$$sdist"; \
	    rm "$$sdist"; done
	printf '%s\n' "vocwatch ($(DEB_VERSION)) unstable; urgency=medium" "" \
	    "  * Built by make deb from $$(git describe --always --dirty 2>/dev/null || echo a source tree); see CHANGELOG.md." "" \
	    " -- vocwatch maintainers <vocwatch@example.com>  $$(date -R)" > $(DEB_BUILD)/src/debian/changelog
	cd $(DEB_BUILD)/src && WHEELHOUSE=$(CURDIR)/$(DEB_BUILD)/wheelhouse dpkg-buildpackage -b -us -uc
	cp $(DEB_BUILD)/vocwatch_$(DEB_VERSION)_$$(dpkg --print-architecture).deb dist/
	@echo "built dist/vocwatch_$(DEB_VERSION)_$$(dpkg --print-architecture).deb"

# The built package's files, conffiles and maintainer scripts, its vocwatch run from the extracted tree, and
# lintian. Its life as a service (install, setup, upgrade, remove, purge) is make systemd-test's, under a real systemd.
deb-test: $(STAMP) deb
	command -v lintian >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian; } || echo "lintian is missing and could not be installed (not root?): its test fails"
	VOCWATCH_DEB=$(DEB_FILE) $(BIN)/python -m pytest -q -m deb

clean:
	rm -rf $(VENV) $(CONTRACT_VENV) .pytest_cache .mypy_cache .ruff_cache build dist
