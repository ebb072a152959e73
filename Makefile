# Foundry Mesh. `make run` and `make test` are the two commands a fresh clone needs; every other
# target they depend on is done once and skipped when up to date.
SHELL := /bin/bash
PY_SYS ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
BUF := $(TOOLS)/node_modules/.bin/buf
BUF_VERSION ?= 1.61.0
PROTOS := $(shell find proto -name '*.proto')
export GRPC_VERBOSITY ?= ERROR
# Off so uvloop is safe: with it on, forked children (git, agents) sometimes die with SIGSEGV.
export GRPC_ENABLE_FORK_SUPPORT ?= false

.PHONY: install sandbox-tools run run-mesh test test-fast check lint proto buf-lint browser k8s-validate load bench agents clean

install: $(VENV)/.installed gen/.stamp $(VENV)/.editable

$(VENV)/.installed: requirements.lock
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

# Generated code lives in gen/ (not committed); it is rebuilt whenever a .proto changes.
gen/.stamp: $(PROTOS) $(VENV)/.installed scripts/gen_proto.py
	$(PY) scripts/gen_proto.py
	touch $@

$(VENV)/.editable: pyproject.toml gen/.stamp
	$(PY) -m pip install -q --no-deps -e .
	touch $@

proto: gen/.stamp

$(BUF):
	npm install --prefix $(TOOLS) --no-audit --no-fund --silent @bufbuild/buf@$(BUF_VERSION)

buf-lint: $(BUF)
	$(BUF) lint

## bubblewrap (confines agents) and socat (their egress proxy forwarder), from Debian, when apt works;
## without them the embedded mode runs agents unconfined with a warning (README "Isolation").
sandbox-tools:
	@command -v bwrap >/dev/null 2>&1 && command -v socat >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap socat >/dev/null) \
	  || echo "warning: could not install bubblewrap/socat; agents will run unconfined (dev only)"; }

## The whole mesh in one process: SQLite under ./data, in-process messaging, five listeners.
run: install sandbox-tools
	$(PY) -m services.embedded

## One process per service on PostgreSQL + RabbitMQ (the shape Kubernetes runs).
run-mesh: install sandbox-tools
	$(PY) -m services.mesh

## Debian's Chromium for the browser test (never a browser download); skipped with a warning when
## apt is not usable (not root), in which case the browser test reports itself skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "warning: could not install chromium; the browser test will be skipped"; }

## Static checks first (seconds), then the whole suite against the real PostgreSQL and RabbitMQ.
test: check browser sandbox-tools
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not e2e"

## buf lint (STANDARD), ruff, mypy --strict, and the import contracts (services never import each other).
lint check: install buf-lint
	$(VENV)/bin/ruff check services gateway cli tests scripts bench load
	$(VENV)/bin/mypy services gateway cli tests
	PYTHONPATH=. $(VENV)/bin/lint-imports

k8s-validate: install
	$(PY) scripts/k8s_validate.py

## Load test with locust against a running mesh (`make load ARGS=--spawn` starts its own).
load: install
	$(PY) -m load $(ARGS)

## Benchmarks; results in bench/results/<name>.json (`make bench ARGS=--quick` for a short run).
bench: install
	$(PY) -m bench $(ARGS)

## Optional: real ACP agents from npm (they need an API key at run time).
agents:
	npm install --prefix $(TOOLS) --no-audit --no-fund @zed-industries/claude-agent-acp @zed-industries/codex-acp

clean:
	rm -rf gen $(VENV) $(TOOLS) data
