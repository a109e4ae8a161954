# Two commands: `make run` starts the service, `make test` runs the tests. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
# pytest processes for `make test`, each test file in one of them (its module fixtures made once); 1: no xdist
TEST_WORKERS ?= 2

.PHONY: run test lint bench soak bench-tools test-tools setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: an open torch requirement would download a multi-GB CUDA build
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

# MALLOC_ARENA_MAX=2: with glibc's default per-thread arenas RSS grew 60-98 MiB while caching 5.6 MiB of
# models; with two arenas 7-23 MiB (bench/memory.py)
run: setup
	MALLOC_ARENA_MAX=2 $(BIN)/neumeta serve --host $(HOST) --port $(PORT)

# The tests run real redis-server, nginx and headless Chromium, and read Fashion-MNIST: installed from Debian when
# missing (as root)
test-tools:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing="$$missing nginx-light"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="$$missing dataset-fashion-mnist"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "make test needs$$missing: apt-get install$$missing" >&2; exit 1; fi; \
	fi

test: setup test-tools
	$(BIN)/pytest $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# wrk and nginx for bench/hot_path.py (Debian packages; installed when missing and we are root)
bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk nginx-light; } || \
	  { echo "bench needs wrk and nginx: apt-get install wrk nginx-light" >&2; exit 1; }

bench: setup bench-tools
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python bench/cold_synthesis.py
	$(BIN)/python bench/mlp_runtime.py
	$(BIN)/python bench/elu.py
	$(BIN)/python bench/hot_path.py
	$(BIN)/python bench/memory.py
	$(BIN)/python bench/accuracy_vs_width.py
	$(BIN)/python bench/redis_outage.py
	$(BIN)/python bench/train_time.py

# the load and fault tests of `make test`, longer and wider, with their figures printed
soak: setup test-tools
	NEUMETA_LOAD_REQUESTS=20000 NEUMETA_LOAD_CLIENTS=64 NEUMETA_FUZZ_EXAMPLES=1000 \
	  $(BIN)/pytest tests/faults -s -p no:cacheprovider --timeout 1800

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
