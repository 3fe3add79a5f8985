# Two commands work on a fresh machine: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: setup test-tools up test lint typecheck protos protos-check unit bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

# Node.js + npm (the other-language client test) and promtool (the alerting rules test).
test-tools:
	@command -v node >/dev/null && command -v npm >/dev/null || { $(SUDO) apt-get update -q && $(APT_INSTALL) nodejs npm; }
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -q && $(APT_INSTALL) prometheus; }

up: setup
	$(BIN)/domicile up --config deploy/cluster.yaml

protos: setup
	$(PY) scripts/gen_protos.py

protos-check: setup
	$(PY) scripts/gen_protos.py --check
	$(BIN)/buf lint

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup
	$(BIN)/mypy domicile node coordinator scripts bench

test: setup test-tools protos-check lint typecheck
	$(PY) -m pytest -q

bench: setup
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .domicile .pytest_cache .mypy_cache .ruff_cache
