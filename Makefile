# Two commands work on a fresh machine: `make up` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: help setup test-tools up up-tiers test lint typecheck protos protos-check sync-client sync-client-check unit fuzz bench bench-cache bench-hit-cost bench-call bench-entropy bench-tree-refresh bench-replication bench-restore bench-scale bench-growth bench-commit profile torture property-long clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{ printf "%-19s %s\n", $$1, $$2 }'

setup: $(VENV)/.installed ## create .venv and install Domicile with its dev tools

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_INSTALL := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends

# Node.js + npm (the other-language client test), promtool (the alerting rules test) and
# redis-server (the read cache's tests). What is missing is installed with one apt-get update
# and one install: on a fresh machine each update alone takes many seconds.
test-tools: ## install Node.js, npm, promtool and redis-server with apt-get when missing
	@missing=""; \
	command -v node >/dev/null && command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	command -v promtool >/dev/null && command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		echo "installing with apt-get:$$missing"; \
		$(SUDO) apt-get update -q && $(APT_INSTALL) $$missing; \
	fi

up: setup ## run a local cluster: a coordinator and seven regional nodes (Ctrl-C stops it)
	$(BIN)/domicile up --config deploy/cluster.yaml

up-tiers: setup ## the full tiers: MongoDB, a Redis cache, S3 backups (SecantusDB, redis-server, SeaweedFS)
	@command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || { $(SUDO) apt-get update -q && $(APT_INSTALL) redis-server; }
	$(BIN)/domicile up --tiers --config deploy/cluster.yaml

protos: setup ## regenerate domicile/v1 from protos/
	$(PY) scripts/gen_protos.py

protos-check: setup ## generated code is fresh, buf lint, buf breaking against the previous protos/
	$(PY) scripts/gen_protos.py --check
	$(BIN)/buf lint
	$(PY) scripts/check_proto_breaking.py

# The blocking client is generated from the asyncio one (domicile/client/async_client.py).
sync-client: setup ## regenerate the blocking client from the asyncio one
	$(PY) scripts/gen_sync_client.py

sync-client-check: setup ## the generated blocking client is fresh
	$(PY) scripts/gen_sync_client.py --check

lint: setup ## ruff check, ruff format --check, import-linter
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: setup ## mypy --strict
	$(BIN)/mypy domicile node coordinator scripts bench torture

# The venv (pip) and the system tools (apt-get) are installed side by side: on a fresh machine
# both take a while, and neither needs the other.
test: ## set up, check everything and run every test
	$(MAKE) --no-print-directory -j2 setup test-tools
	$(MAKE) --no-print-directory protos-check sync-client-check lint typecheck
	$(PY) -m pytest -q

unit: setup ## the unit tests only (seconds)
	$(PY) -m pytest -q tests/unit

# make test runs each harness briefly over its committed corpus; this runs them for longer and keeps
# what they find (new inputs, crash files) under FUZZ_DIR, never in the committed corpus.
FUZZ_SECONDS ?= 300
FUZZ_DIR ?= .fuzz
fuzz: setup ## run every fuzz harness for FUZZ_SECONDS (300) each; new inputs and crashes go to .fuzz/
	$(PY) tests/fuzz/runner.py --seconds $(FUZZ_SECONDS) --scratch $(FUZZ_DIR)

bench: setup ## benchmarks, each next to a baseline of the same run (a few minutes)
	$(PY) bench/run.py

bench-cache: setup ## only the read cache's hit figures (SQLite and MongoDB engines; SQLite with Redis on a unix socket too), two rounds each (ARGS=--samples N --rounds N)
	$(PY) -m bench.cache_hits $(ARGS)
bench-hit-cost: setup ## what CPU before, during and after a cache hit's Redis round trip costs in latency, on floors that spin (ARGS=--samples N --busy B,W,A)
	$(PY) -m bench.hit_cost $(ARGS)
bench-call: setup ## node CPU per single Put vs echo CPU per call, Put p99 vs echo + 2 fdatasync (a minute)
	$(PY) -m bench.call_cost $(ARGS)

bench-replication: setup ## replication lag and CPU per replicated record: one replica, batches, six regions, a delayed link (ARGS=--profile DIR)
	$(PY) -m bench.replication $(ARGS)

# METHOD is the load (put: single-record Puts, put_batch: PutBatch calls); SECONDS the sampling time.
METHOD ?= put
SECONDS ?= 10
profile: setup ## py-spy profile of a node under a write load: the top functions by CPU share (METHOD=put|put_batch SECONDS=10)
	$(PY) -m bench.profile --method $(METHOD) --seconds $(SECONDS)

# RECORDS records of 1 KiB through PutBatch into one node (1,000,000 unless RECORDS=N is given).
bench-scale: RECORDS = 1000000
bench-scale: setup ## one node at RECORDS records (1,000,000): load, disk, RSS, start-up, Get p99, scans
	$(PY) -m bench.scale --records $(RECORDS) --out bench/results/scale.json

bench-entropy: setup ## time one anti-entropy round repairing 10,000 divergent keys
	$(PY) -m bench.antientropy

bench-tree-refresh: setup ## the event loop while the digest trees refresh 50,000 marked keys, in one go and paced
	$(PY) -m bench.tree_refresh

# RECORDS records of 1 KiB; the run prints each figure beside its baseline.
RECORDS ?= 100000
bench-restore: setup ## backup throughput, recovery point and restore time against a local S3 (RECORDS=N)
	$(PY) bench/restore.py --records $(RECORDS)

# RECORDS writes (1,000,000 here unless given) into one store; truncation passes as a node runs them.
bench-growth: RECORDS = 1000000
bench-growth: setup ## change-log rows after N writes with truncation: bounded, beside the rows without (RECORDS=N)
	$(PY) bench/growth.py --records $(RECORDS)

bench-commit: setup ## single durable commits: checkpoints between the commits against SQLite's inside them, p50/p99/p99.9 (ARGS=--pause-ms MS --commits N)
	$(PY) -m bench.commit_tail --out bench/results/commit_tail.json $(ARGS)

# SEED replays a run; DURATION is the seconds of faults; ENGINE=mongodb runs the nodes on MongoDB
# (a SecantusDB the run starts). The run's files go to a temp dir it prints.
DURATION ?= 300
ENGINE ?= sqlite
torture: setup ## a Jepsen-style run under faults with a history checker (SEED=N DURATION=s ENGINE=sqlite|mongodb)
	$(PY) -m torture.run --duration $(DURATION) --engine $(ENGINE) $(if $(SEED),--seed $(SEED))

property-long: OPS = 66668
property-long: setup ## the compliance property test under faults, 3 x OPS/2 operations (66668: 100,002; about an hour) (SEED=N)
	$(if $(SEED),DOMICILE_SEED=$(SEED)) DOMICILE_PROPERTY_OPS=$(OPS) $(PY) -m pytest -q -s --timeout 0 \
		tests/integration/test_compliance_property.py -k partitions

clean: ## remove .venv, local cluster data and caches
	rm -rf $(VENV) .domicile .fuzz .pytest_cache .mypy_cache .ruff_cache
