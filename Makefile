# The README's two commands are `make demo` and `make test`; `.ci/run` calls `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo serve test test-pgbouncer lint format docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Install, set up a demo team on SQLite, print its id, key and the operator token, and serve.
demo: $(STAMP)
	$(BIN)/billfold demo

serve: $(STAMP)
	$(BIN)/billfold serve

## Install and run the whole test suite (SQLite and PostgreSQL).
test: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile

## The tests that use PostgreSQL, again, through a private PgBouncer in transaction mode (CI).
test-pgbouncer: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile --pgbouncer

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## docs/errors.md from the catalogue of error codes (src/billfold/kit/error_codes.py).
docs: $(STAMP)
	$(BIN)/python -m billfold.kit.error_codes > docs/errors.md

clean:
	rm -rf $(VENV) billfold.db billfold.db-* billfold-demo.json .pytest_cache .mypy_cache .ruff_cache
