# ZThumb developer entry points. Every target works on a fresh machine: it creates
# the virtual environment and builds the local control plane when they are missing.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
export HF_HUB_OFFLINE := 1
export PYTHONUNBUFFERED := 1

.PHONY: help install k8s-bin demo test lint unit e2e bench clean

help:
	@echo "make demo   - the whole pipeline on the tiny model, locally (no cluster, no GPU)"
	@echo "make test   - lint + unit/integration tests + end-to-end tests on a local control plane"
	@echo "make lint   - ruff, mypy, hadolint, helm lint"
	@echo "make unit   - tests that need no cluster"
	@echo "make e2e    - tests against the local control plane (started and stopped here)"

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zthumb-train run --local

lint: $(STAMP) k8s-bin
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint images/zthumb/Dockerfile images/trainer/Dockerfile images/trainer/Dockerfile.cpu operator/Dockerfile
	PATH="$$(hack/cluster.sh bindir):$$PATH" helm lint --strict charts/zthumb

# The chart's template tests need helm: it is built with the control plane.
k8s-bin:
	hack/build-k8s.sh

unit: $(STAMP) k8s-bin
	PATH="$$(hack/cluster.sh bindir):$$PATH" $(BIN)/pytest -m "not e2e" -p no:cacheprovider

e2e: $(STAMP) k8s-bin
	hack/cluster.sh up
	trap 'hack/cluster.sh down' EXIT; eval "$$(hack/cluster.sh env)"; \
	  ZTHUMB_E2E=1 $(BIN)/pytest -m e2e -p no:cacheprovider

test: lint unit e2e

bench: $(STAMP)
	$(BIN)/python hack/bench_server.py
	$(BIN)/python hack/bench_train.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build *.egg-info
