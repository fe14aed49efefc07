# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint fixtures bench bench-floor bench-fhir bench-screen alert-burden soak faults clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/cds-service serve

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check cds_service tests bench fixtures

fixtures: $(STAMP)
	$(BIN)/python fixtures/generate.py

bench: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk) || \
		{ echo "wrk is missing: run 'apt-get install wrk' (Debian) as root" >&2; exit 1; }
	$(BIN)/python bench/load.py
	$(BIN)/python bench/quieting.py
	$(BIN)/python bench/alert_burden.py

alert-burden: $(STAMP)
	$(BIN)/python bench/alert_burden.py

bench-floor: $(STAMP)
	@command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk) || \
		{ echo "wrk is missing: run 'apt-get install wrk' (Debian) as root" >&2; exit 1; }
	$(BIN)/python bench/floor.py

bench-fhir: $(STAMP)
	$(BIN)/python bench/fhir_fallback.py

# Population screening at 1,000, 10,000 and 100,000 generated patients beside the parse and
# DuckDB floors (exports cached in bench/.cache/; SIZES=1000,10000 for a quicker run).
bench-screen: $(STAMP)
	$(BIN)/python bench/screen.py $(if $(SIZES),--sizes $(SIZES))

soak: $(STAMP)
	$(BIN)/python bench/load.py --soak 300

# Slow clients, kill -9, full disk, locked SQLite, hung PostgreSQL against the real server.
faults: $(STAMP)
	$(BIN)/python bench/faults.py

clean:
	rm -rf $(VENV) build *.egg-info
