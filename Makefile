# Two entry points on a fresh machine: `make demo` and `make test`.
# Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[stream,dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/journeys demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest

# The benchmark harness (docs/bench.md): 1M events by default; EVENTS=10M for the scale run.
EVENTS ?= 1M
bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[stream,dev,bench]'
	$(BIN)/journeys bench --events $(EVENTS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .journeys .pytest_cache
