PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench torture clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,postgres,mysql]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segcrit demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q -rs -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/processing.py
	$(BIN)/python benchmarks/delivery.py
	$(BIN)/python benchmarks/events.py
	$(BIN)/python benchmarks/cohort.py
	$(BIN)/python benchmarks/enrichment.py
	$(BIN)/python benchmarks/postgres.py

# kill -9 at random moments under traffic (SPEC §7); 5 to 10 minutes, so not part of `bench`.
torture: $(STAMP)
	$(BIN)/python benchmarks/torture.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache
