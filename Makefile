# Everything a newcomer needs: `make demo` (the main job) and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
CONFIG  ?= configs/demo.yaml
STAMP    = $(VENV)/.installed

.PHONY: venv install demo markov test test-fast test-all check-size lint format clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0          # CPU wheel on disk; must come first
	$(BIN)/pip install -q -e '.[dev,eval,serve]'
	touch $(STAMP)

venv install: $(STAMP)

demo: $(STAMP)                                  ## the main job on the built-in default
	$(BIN)/tsdfm pipeline --config $(CONFIG)

markov: $(STAMP)                                ## the exact benchmark
	$(BIN)/tsdfm pipeline --config configs/markov.yaml

test: $(STAMP)                                  ## hermetic tests, no network (what CI runs)
	$(BIN)/python -m pytest -q -m "not network"

test-fast: $(STAMP)                             ## skip the tests marked slow too
	$(BIN)/python -m pytest -q -m "not slow and not network"

test-all: $(STAMP)                              ## everything, including network tests
	$(BIN)/python -m pytest -q

check-size: $(STAMP)                            ## docs/ within its budget, no raw samples (also in `make test`)
	@git ls-files -z docs | xargs -0 du -cb --apparent-size 2>/dev/null | tail -1 | awk '{printf "docs/: %.1f MB committed\n", $$1 / 1e6}'
	$(BIN)/python -m pytest -q tests/test_docs_size.py

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks studies scripts
	$(BIN)/ruff format --check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
