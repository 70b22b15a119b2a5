# Everything installs into .venv from a bare Python 3; every target sets itself up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CODE := vocwatch tests $(wildcard bench)

.PHONY: demo test lint format bench clean

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
	$(BIN)/python -m pytest -q

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
