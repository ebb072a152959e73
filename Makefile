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

.PHONY: install vendor sandbox-tools real-agent run run-mesh test test-fast check lint proto buf-lint browser k8s-validate load bench agents clean

install: $(VENV)/.installed gen/.stamp $(VENV)/.editable vendor

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

## Browser libraries of the workbench, from npm at a pinned version into gateway/static/vendor/ (not
## committed; their license files are copied along). Without npm the workbench still works: the
## Changes panel then shows plain diffs and the Terminal panel says its renderer is missing.
DIFF2HTML_VERSION ?= 3.4.56
XTERM_VERSION ?= 6.0.0
XTERM_FIT_VERSION ?= 0.11.0
VENDOR := gateway/static/vendor
vendor: $(VENDOR)/diff2html/.v$(DIFF2HTML_VERSION) $(VENDOR)/xterm/.v$(XTERM_VERSION)-$(XTERM_FIT_VERSION)

$(VENDOR)/diff2html/.v$(DIFF2HTML_VERSION):
	@if npm install --prefix $(TOOLS)/web --no-audit --no-fund --silent diff2html@$(DIFF2HTML_VERSION); then \
	  rm -rf $(VENDOR)/diff2html && mkdir -p $(VENDOR)/diff2html && \
	  d=$(TOOLS)/web/node_modules/diff2html && \
	  cp $$d/bundles/js/diff2html.min.js $$d/bundles/css/diff2html.min.css $$d/LICENSE.md $(VENDOR)/diff2html/ && \
	  touch $@; \
	else echo "warning: could not install diff2html from npm; the workbench shows plain diffs"; fi

# The terminal's renderer: @xterm/xterm and its fit addon (ES modules, as .js for their MIME type).
$(VENDOR)/xterm/.v$(XTERM_VERSION)-$(XTERM_FIT_VERSION):
	@if npm install --prefix $(TOOLS)/web --no-audit --no-fund --silent @xterm/xterm@$(XTERM_VERSION) @xterm/addon-fit@$(XTERM_FIT_VERSION); then \
	  rm -rf $(VENDOR)/xterm && mkdir -p $(VENDOR)/xterm && \
	  d=$(TOOLS)/web/node_modules/@xterm && \
	  cp $$d/xterm/lib/xterm.mjs $(VENDOR)/xterm/xterm.js && cp $$d/xterm/css/xterm.css $(VENDOR)/xterm/ && \
	  cp $$d/xterm/LICENSE $(VENDOR)/xterm/LICENSE && \
	  cp $$d/addon-fit/lib/addon-fit.mjs $(VENDOR)/xterm/addon-fit.js && \
	  cp $$d/addon-fit/LICENSE $(VENDOR)/xterm/LICENSE.addon-fit && \
	  touch $@; \
	else echo "warning: could not install @xterm/xterm from npm; the workbench's terminal is unavailable"; fi

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

## The real Claude ACP agent from npm for the offline real-agent test (tests/unit/sandbox/test_real_agent.py,
## against a local stand-in of the model API); when npm is unreachable that test reports itself skipped.
## Likewise the real Codex ACP agent, pinned (tests/unit/sandbox/test_real_codex_agent.py, against a
## stand-in of the OpenAI Responses API; the test pins the models this version offers).
CLAUDE_ACP := $(TOOLS)/node_modules/@zed-industries/claude-agent-acp/dist/index.js
CODEX_ACP_VERSION ?= 0.16.0
CODEX_ACP := $(TOOLS)/node_modules/@zed-industries/codex-acp
real-agent:
	@test -f $(CLAUDE_ACP) || npm install --prefix $(TOOLS) --no-audit --no-fund --silent @zed-industries/claude-agent-acp \
	  || echo "warning: could not install @zed-industries/claude-agent-acp; the real-agent test will be skipped"
	@grep -qs '"version": "$(CODEX_ACP_VERSION)"' $(CODEX_ACP)/package.json \
	  || npm install --prefix $(TOOLS) --no-audit --no-fund --silent @zed-industries/codex-acp@$(CODEX_ACP_VERSION) \
	  || echo "warning: could not install @zed-industries/codex-acp@$(CODEX_ACP_VERSION); the real Codex test will be skipped"

## Static checks first (seconds), then the whole suite against the real PostgreSQL and RabbitMQ.
## Tests marked own_process run after the rest, in a pytest process of their own (see the marker).
## The rest runs in TEST_WORKERS pytest-xdist workers: most of a test's time is spent waiting on
## processes, servers and sockets, so two workers on two cores halve the wall time. Each worker
## starts its own PostgreSQL and RabbitMQ (tests/helpers/servers.py) and picks ports from its own
## share (load/ports.py; a crashed worker is not replaced: its test fails and the shares
## stay disjoint). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
test: check browser sandbox-tools real-agent
	$(PY) -m pytest -q --durations=30 -n $(TEST_WORKERS) --max-worker-restart=0 -m "not own_process"
	$(PY) -m pytest -q -m own_process

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
	npm install --prefix $(TOOLS) --no-audit --no-fund @zed-industries/claude-agent-acp @zed-industries/codex-acp@$(CODEX_ACP_VERSION)

clean:
	rm -rf gen $(VENV) $(TOOLS) data
