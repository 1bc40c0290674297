# Pushmail developer commands. `make demo` and `make test` are all a new machine needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo run test test-unit test-integration test-browser screenshots lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed  ## create the virtualenv and install pinned requirements

demo: setup  ## two instances (alpha.localhost:8001, beta.localhost:8002) on SQLite + embedded broker
	$(BIN)/python -m tools.demo

run: demo

test: setup  ## the whole suite; PostgreSQL + Redis when reachable, else SQLite + embedded broker
	bash tools/test.sh

test-unit: setup
	bash tools/test.sh tests/unit

test-integration: setup
	bash tools/test.sh tests/integration

test-browser: setup  ## Playwright + Debian's /usr/bin/chromium against two running instances
	bash tools/test.sh tests/browser

screenshots: setup  ## regenerate docs/screenshots/*.png (desktop and phone widths)
	$(BIN)/python -m tools.screenshots

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=1 $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup  ## benchmarks; results go in docs/benchmarks.md
	bash bench/run_all.sh

clean:
	rm -rf var/demo
