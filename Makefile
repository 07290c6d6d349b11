# `make demo` and `make test` work on a fresh machine: both build .venv and install everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install test lint chromium cluster-deps cluster demo bench matrix clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# uv resolves Airflow's dependency tree in seconds where pip takes minutes.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	# --compile-bytecode: as pip does by default, so every Airflow process (each task run forks one) loads
	# .pyc files instead of compiling Airflow's sources again wherever PYTHONDONTWRITEBYTECODE is set.
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $@

install: $(INSTALLED)

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

# The browser test drives Debian's chromium (Playwright never downloads a browser here).
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium; \
	fi

# The cluster smoke test (pytest -m cluster) runs PostgreSQL and Redis from Debian's packages.
cluster-deps:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="postgresql"; \
	[ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	if [ -n "$$missing" ]; then \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing; \
	fi

test: lint chromium cluster-deps
	$(BIN)/python -m pytest

# A CeleryExecutor deployment (PostgreSQL, Redis, scheduler, api-server, dag-processor, triggerer, two
# Celery workers, the emulator with the real quota, moto_server) on loopback until Ctrl-C.
cluster: install cluster-deps
	$(BIN)/python benchmarks/cluster.py

# The built wheel (not editable) in fresh venvs: each supported Airflow line at its newest patch, the lowest
# declared dependencies, and the README's quick start from an empty directory (.ci/matrix.py); about 5 min.
matrix: install
	$(BIN)/python .ci/matrix.py

demo: install
	$(BIN)/python benchmarks/demo.py --output demo-output

bench: install
	$(BIN)/python benchmarks/bench_import_cost.py
	$(BIN)/python benchmarks/bench_hook_overhead.py
	$(BIN)/python benchmarks/bench_transfer_memory.py
	$(BIN)/python benchmarks/bench_input_memory.py
	$(BIN)/python benchmarks/bench_transfer_concurrency.py
	$(BIN)/python benchmarks/bench_pipeline_faults.py
	# About 3 min: the Images view of a 50-image run in chromium, against Airflow's own pages of the run.
	$(BIN)/python benchmarks/bench_ui_gallery.py
	# About 6 min: 100 gateway generations through the openai client, then 100 gateway and 100 native
	# generations through the provider's mapped DAG, against the hostile emulator; then every crash point x
	# endpoint x way of dying (39 cases) under LocalExecutor, each retried, and the same cases uncrashed;
	# fails on a double charge, a paid image neither stored nor reported, or a wrong-task adoption.
	$(BIN)/python benchmarks/bench_billing_safety.py
	# About 10 min: 40 generations of 20 s, sync then deferrable, under a real airflow standalone.
	$(BIN)/python benchmarks/bench_deferrable.py

clean:
	rm -rf $(VENV) demo-output test-artifacts dist build .pytest_cache .mypy_cache .ruff_cache
