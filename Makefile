# Two commands do all the set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The newest Python tested (make test-py313): pyenv's build if there is one, else from PATH.
PYTHON313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) python3.13)
VENV313 := .venv313

# The whole dependency tree, exact versions and hashes: runtime + dev (make, CI) and runtime
# alone (the Docker image). `make lock` writes both from pyproject.toml.
LOCK := requirements.lock
RUNTIME_LOCK := requirements-runtime.lock
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --quiet --universal --python-version 3.11 \
	--generate-hashes --custom-compile-command "make lock"

.PHONY: serve test test-py313 lint lock fixtures bench bench-floor bench-fhir alert-burden soak \
	faults bench-servers bench-screen clean

# pip, not uv, installs: a fresh machine has only Python. The lock pins every package (hashes
# checked); the project itself goes in editable, with no dependency resolution of its own.
$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes --requirement $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# After any change to the dependencies in pyproject.toml. uv comes from the venv (dev extra);
# a lock that no longer installs can be rewritten with `make lock BIN=/path/to/uv/bin`.
lock:
	@test -x $(BIN)/uv || $(MAKE) $(STAMP)
	$(UV_COMPILE) --extra dev --output-file $(LOCK)
	$(UV_COMPILE) --output-file $(RUNTIME_LOCK)

serve: $(STAMP)
	$(BIN)/cds-service serve

test: $(STAMP)
	$(BIN)/pytest

# The suite on the newest supported Python, in its own venv, from the same lock.
$(VENV313)/.installed: $(LOCK) pyproject.toml
	$(PYTHON313) -m venv $(VENV313)
	$(VENV313)/bin/pip install --quiet --upgrade pip
	$(VENV313)/bin/pip install --quiet --require-hashes --requirement $(LOCK)
	$(VENV313)/bin/pip install --quiet --no-deps -e .
	touch $@

test-py313: $(VENV313)/.installed
	$(VENV313)/bin/pytest

# mypy's settings (strict on the clinical core, knowledge and FHIR reading): pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check cds_service tests bench fixtures
	$(BIN)/mypy

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

# serve's two servers and gunicorn sync alone, interleaved (bench/README.md, issue 12).
bench-servers: $(STAMP)
	$(BIN)/python bench/server_ab.py --servers proxy,granian,gunicorn-sync

clean:
	rm -rf $(VENV) $(VENV313) build *.egg-info
