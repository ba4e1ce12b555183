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

.PHONY: help install k8s-bin demo test lint unit e2e images release bench clean manifests

help:
	@echo "make demo   - the whole pipeline on the tiny model, locally (no cluster, no GPU)"
	@echo "make test   - lint + unit/integration tests + end-to-end tests on a local control plane"
	@echo "make lint   - ruff, mypy, import contracts (lint-imports), hadolint, shellcheck, helm lint, actionlint"
	@echo "make unit   - tests that need no cluster"
	@echo "make e2e    - tests against the local control plane (started and stopped here)"
	@echo "make manifests - render manifests/operator/ from the operator chart (charts/zthumb-operator)"
	@echo "make images - build the container images with buildah (no Docker) and import them"
	@echo "              into the real node's containerd when it is up (hack/images/README-images.md)"
	@echo "make release - images, chart, SBOMs and SHA256SUMS in dist/, and the commands that push"
	@echo "              them (ZTHUMB_RELEASE_REGISTRY=ghcr.io/my-org; README, Install on your cluster)"

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zthumb-train run --local

# lint-imports checks the import contracts ([tool.importlinter] in pyproject.toml) on this
# checkout's sources, whatever the virtual environment has installed.
lint: $(STAMP) k8s-bin
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	PYTHONPATH=contract:images/zthumb:images/trainer:operator $(BIN)/lint-imports --no-cache
	$(BIN)/hadolint images/base/Dockerfile images/zthumb/Dockerfile images/trainer/Dockerfile \
	  images/helm-test/Dockerfile operator/Dockerfile
	$(BIN)/shellcheck --external-sources $$(find hack -name '*.sh' | sort) .ci/run
	PATH="$$(hack/cluster/cluster.sh bindir):$$PATH" helm lint --strict charts/zthumb
	PATH="$$(hack/cluster/cluster.sh bindir):$$PATH" helm lint --strict charts/zthumb-operator
	hack/tools/build-actionlint.sh
	"$$(hack/cluster/cluster.sh bindir)/actionlint" .github/workflows/*.yml

# The chart's template tests need helm: it is built with the control plane.
k8s-bin:
	hack/cluster/build-k8s.sh

# In random order (pytest-randomly; it prints its seed): a test that needs another one first fails
# here. Replay an order with `$(BIN)/pytest -m "not e2e" -p randomly --randomly-seed=N`.
# Shuffled order (pytest-randomly). CI replays a shuffle that was checked green, so a new order
# dependence cannot turn an unrelated change red; `make unit RANDOMLY_SEED=` draws a fresh order
# (the seed is printed, `RANDOMLY_SEED=N` replays it).
RANDOMLY_SEED ?= 1343200256

unit: $(STAMP) k8s-bin
	hack/tools/ensure-chromium.sh
	PATH="$$(hack/cluster/cluster.sh bindir):$$PATH" $(BIN)/pytest -m "not e2e" -p no:cacheprovider -p randomly \
	  $(if $(RANDOMLY_SEED),--randomly-seed=$(RANDOMLY_SEED))

# The real-node tests (tests/e2e/real) run our images in the node's containerd: they are built
# (or reused, by inputs hash) before the cluster starts and imported once it is up.
# ZTHUMB_REAL_NODE=0 (a cluster without the real node) skips both and those tests say so.
e2e: $(STAMP) k8s-bin
	if [ "$${ZTHUMB_REAL_NODE:-1}" != 0 ]; then hack/images/build-images.sh --no-import; fi
	hack/cluster/cluster.sh up
	trap 'hack/cluster/cluster.sh down' EXIT; eval "$$(hack/cluster/cluster.sh env)"; \
	  if [ "$${ZTHUMB_REAL_NODE:-1}" != 0 ]; then hack/images/build-images.sh import; fi; \
	  ZTHUMB_E2E=1 $(BIN)/pytest -m e2e -p no:cacheprovider

test: lint unit e2e

# manifests/operator/ (for `kubectl apply`) is the operator chart rendered; a unit test fails when
# the checked-in files differ from a fresh render.
manifests: k8s-bin
	PATH="$$(hack/cluster/cluster.sh bindir):$$PATH" $(PYTHON) hack/release/render_operator_manifests.py

# Builds (or reuses) every image and imports it when the node's containerd is up.
images:
	hack/images/build-images.sh

# hack/release/release.sh: every image (reused when cached), the chart, a CycloneDX SBOM per Python image
# and SHA256SUMS in dist/; it prints the push commands (ZTHUMB_RELEASE_REGISTRY names the registry).
release: $(STAMP) k8s-bin
	hack/release/release.sh

bench: $(STAMP)
	$(BIN)/python hack/bench/bench_server.py
	$(BIN)/python hack/bench/bench_train.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache build *.egg-info artifacts
