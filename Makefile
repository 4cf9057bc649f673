# chatd: `make run` serves the embedded default on :8080; `make test` installs and starts
# everything the suite needs (the real MariaDB, Redis, RabbitMQ and Elasticsearch too) and runs it.
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat setup.cfg pyproject.toml | md5sum | cut -c1-12)
# The fault tests' TCP proxy (tests/faults/toxiproxy.py), built from its Go module by `make toxiproxy`.
TOXIPROXY := $(BIN)/toxiproxy-server
TOXIPROXY_MODULE := github.com/Shopify/toxiproxy/v2/cmd/server@v2.12.0

.PHONY: install run run-real test test-cluster test-embedded test-faults toxiproxy soak services services-stop cluster cluster-stop lint bench bench-quick bench-live bench-scale bench-backup bench-cluster bench-tools ops-tools browser-tools clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Development: GET /applications lists every token without an admin token (CHATD_OPEN_LISTING=1).
run: install
	CHATD_OPEN_LISTING=1 $(BIN)/chatd serve --host 127.0.0.1 --port 8080

# The same program on MariaDB, Redis, RabbitMQ and Elasticsearch (after `make services`).
run-real: install
	set -a && eval "$$(bash scripts/services.sh env)" && set +a && $(BIN)/chatd migrate && CHATD_OPEN_LISTING=1 $(BIN)/chatd serve --host 127.0.0.1 --port 8080

services:
	bash scripts/services.sh up

services-stop:
	bash scripts/services.sh stop

# A local cluster on other ports, next to the single servers (3 RabbitMQ, Redis primary + 2 replicas +
# 3 Sentinels, 3 Elasticsearch, MariaDB primary + replica); `bash scripts/services.sh cluster env` for its URLs.
cluster:
	bash scripts/services.sh cluster up

cluster-stop:
	bash scripts/services.sh cluster down

# The whole suite on the single servers, then the node-loss suite on the local cluster.
test: install services toxiproxy bench-tools ops-tools browser-tools
	$(BIN)/pytest -p no:cacheprovider -m "not cluster" --durations=15
	$(MAKE) --no-print-directory test-cluster

# Node loss under load on the local cluster (tests/cluster): kill -9 of a RabbitMQ queue leader, the
# Redis primary, an Elasticsearch node, the MariaDB primary (then the promotion runbook).
test-cluster: install
	bash scripts/services.sh cluster up
	set -a && eval "$$(bash scripts/services.sh cluster test-env)" && set +a && \
		$(BIN)/pytest -p no:cacheprovider -m cluster tests/cluster

test-embedded: install
	$(BIN)/pytest -p no:cacheprovider -m "not real and not cluster"

test-faults: install services toxiproxy bench-tools
	$(BIN)/pytest -p no:cacheprovider -m faults

# Toxiproxy for the partition and latency faults: `go install` of its server module (the module
# proxy's @latest is an old 2.5.0, hence the pinned version) into the venv's bin; skipped when the
# binary is there. Go from /usr/local/go if installed there, else Debian's golang-go.
toxiproxy: $(TOXIPROXY)

$(TOXIPROXY):
	@export PATH="$$PATH:/usr/local/go/bin"; command -v go >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go ca-certificates >/dev/null; }
	@mkdir -p $(BIN)/.toxiproxy-build
	export PATH="$$PATH:/usr/local/go/bin" GOBIN="$(abspath $(BIN))/.toxiproxy-build" GOFLAGS=-buildvcs=false && \
		go install $(TOXIPROXY_MODULE)
	mv $(BIN)/.toxiproxy-build/server $@ && rmdir $(BIN)/.toxiproxy-build

# 30 minutes at half the measured capacity on the real set, a fault every 3 minutes; RSS and lag
# sampled (tests/faults/soak.py; the chart needs matplotlib, from the bench extra). Not part of `make test`. SOAK_ARGS="--minutes 3" for a trial.
soak: install services toxiproxy
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m tests.faults.soak $(SOAK_ARGS)

lint: install
	$(BIN)/ruff check chatd tests bench
	$(BIN)/ruff format --check chatd tests bench
	$(BIN)/mypy chatd

# The load clients come from Debian: wrk and ab (apache2-utils); `apt-get update` only when they are missing.
bench-tools:
	@command -v wrk >/dev/null && command -v ab >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk apache2-utils >/dev/null; }

# promtool (Debian's prometheus) checks deploy/prometheus/; systemd-analyze verifies deploy/systemd/.
ops-tools:
	@command -v promtool >/dev/null && command -v systemd-analyze >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus systemd >/dev/null; }

# Debian's chromium, driven by Playwright (executable_path=/usr/bin/chromium) in the page tests.
browser-tools:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Writes bench/results.md (the README's Performance tables); BENCH_ARGS="--sets real --workers 1,2" etc.
bench: install services bench-tools
	$(BIN)/python -m bench $(BENCH_ARGS)

# Reads at 10k, 100k and 1M stored messages on both backend sets: bench/scale-results.md, the
# chart bench/scale-latency.png and the README's scale tables (about 30 minutes; not in `make test`).
# BENCH_ARGS="--sets embedded --sizes 10000,100000" for a shorter run.
bench-scale: install services bench-tools
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.scale $(BENCH_ARGS)

# `chatd backup` and `chatd restore` (with the reindex) at a million messages on both sets:
# bench/backup-results.md and the README's Backups table (about 15 minutes; not in `make test`).
# BENCH_ARGS="--size 100000" for a shorter run.
bench-backup: install services
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python -m bench.backup $(BENCH_ARGS)

# chatd on the local cluster with 1 and 2 api processes and 1 and 2 workers: rates and CPU per
# component (bench/results-cluster.md, the README's "Scaling out"; about 5 minutes, not in `make test`).
# BENCH_ARGS="--shapes 1x1 --seconds 5" for a check run.
bench-cluster: install bench-tools
	bash scripts/services.sh cluster up
	set -a && eval "$$(bash scripts/services.sh cluster test-env)" && set +a && \
		$(BIN)/python -m bench.scale_out $(BENCH_ARGS)

# Short rounds, to check the benchmark runs (bench/results-quick.md, not for the README).
bench-quick: install services bench-tools
	$(BIN)/python -m bench --quick $(BENCH_ARGS)

# Live events at scale (10,000 subscribers on one api process, 201 -> event latency at 1,000 msg/s):
# bench/results-live.md and the README's live tables. BENCH_ARGS="--quick" for a check run.
bench-live: install services
	$(BIN)/python -m bench.live $(BENCH_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache .hypothesis chatd.db* chatd-search.db* chatd-embedded.db* *.search.db* *.embedded.db*
