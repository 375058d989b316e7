# Two commands on a fresh machine: `make demo` and `make test`. Both install everything they need
# into .venv first (CI starts from a clean clone: nothing may be installed by hand).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SIM_PORTS := 18101
DEMO_CONFIG ?= conf/local.yaml
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[sail,test,classic]"
	touch $(STAMP)

# Sample corpus -> two simulated endpoints (stand-ins for the 35B scorer) -> the whole job on Sail + Delta.
demo: install
	$(BIN)/mira-spark make-sample --out data/sample
	@mkdir -p .tmp; \
	$(BIN)/mira-spark serve-sim --port $(SIM_PORTS) --endpoints 2 > .tmp/serve-sim.log 2>&1 & sim=$$!; \
	trap "kill $$sim 2>/dev/null; wait $$sim 2>/dev/null" EXIT; \
	for i in $$(seq 1 100); do curl -sf http://127.0.0.1:18101/health >/dev/null && curl -sf http://127.0.0.1:18102/health >/dev/null && break; sleep 0.2; done; \
	$(BIN)/mira-spark run --config $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf data .tmp spark-warehouse .pytest_cache
