# The commands a newcomer types. `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CS := $(VENV)/bin/crawlstream
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
BENCH_STAMP := $(VENV)/.bench-$(shell sha1sum pyproject.toml | cut -c1-12)
# `make bench BENCH_ARGS="--only crawl,clients"`; `make bench-quick` for the quick mode.
BENCH_ARGS ?=

.PHONY: help prereqs install up down status run test test-unit lint mutate bench bench-quick report clean

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

prereqs: ## install missing system packages (Java 17+, Maven, PostgreSQL, python3.11-doc, Prometheus, kcat)
	@deploy/scripts/install-prereqs.sh

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

# Go tools the deployment tests run (tests/unit/test_deploy_k8s.py), built from the Go module proxy
# into .venv/bin: kustomize renders deploy/k8s, kubeconform validates it against tests/data/schemas.
KUSTOMIZE_VERSION := v5.5.0
KUBECONFORM_VERSION := v0.6.7
GO_TOOLS_STAMP := $(VENV)/.go-tools-$(KUSTOMIZE_VERSION)-$(KUBECONFORM_VERSION)

$(GO_TOOLS_STAMP): $(STAMP)
	@command -v go >/dev/null || { echo "go is needed to build kustomize and kubeconform (https://go.dev/dl)"; exit 1; }
	GOBIN=$(abspath $(VENV))/bin go install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)
	GOBIN=$(abspath $(VENV))/bin go install github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	@rm -f $(VENV)/.go-tools-* && touch $(GO_TOOLS_STAMP)

install: prereqs $(STAMP) $(GO_TOOLS_STAMP) ## create .venv and install crawlstream with its dev tools

up: install ## start the embedded stack (Kafka, PostgreSQL, Kafka Connect + Debezium)
	$(CS) stack up

down: ## stop workers and the embedded stack
	@if [ -x $(CS) ]; then $(CS) stack down; fi

status: ## show the embedded stack's services
	$(CS) stack status

run: install ## the main job: stack up, workers, crawl the demo site, reconcile every stage
	$(CS) demo

# Unit tests run in a random order (pytest-randomly prints the seed); integration and e2e tests
# share one live stack and run in file order.
test: install ## start the stack, run unit + integration + e2e tests, stop what was started
	@was_up=0; $(CS) stack status --json >/dev/null 2>&1 && was_up=1; \
	$(CS) stack up || exit 1; \
	$(PY) -m pytest tests/unit -p no:cacheprovider && \
	$(PY) -m pytest tests/integration tests/e2e -p no:cacheprovider -p no:randomly; rc=$$?; \
	if [ $$was_up = 0 ]; then $(CS) stack down; fi; exit $$rc

test-unit: install ## unit tests only (no services)
	$(PY) -m pytest tests/unit

lint: install ## ruff (lint + format check) and mypy --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Not part of `make test` (4,123 mutants: about an hour on a quiet 2-core machine, 25 minutes with
# MUTATE_CHILDREN=2; hours when the machine is shared): mutmut over
# [tool.mutmut] in pyproject.toml, one mutant at a time unless MUTATE_CHILDREN says otherwise.
# The report keeps its hand-written judgements (tests/support/mutation_report.py).
MUTATE_CHILDREN ?= 1
mutate: install ## mutation testing of the exactness, politeness and scheduling modules; writes tests/MUTATION.md
	rm -rf mutants
	nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATE_CHILDREN)
	$(PY) tests/support/mutation_report.py --output tests/MUTATION.md
	@head -25 tests/MUTATION.md

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,bench]'
	@rm -f $(VENV)/.bench-* && touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP) ## every benchmark (about an hour), then plots + SUMMARY.md in bench/results/
	$(PY) bench/run_all.py $(BENCH_ARGS)

bench-quick: install $(BENCH_STAMP) ## the same with small sizes and few rounds (about 15 minutes)
	$(PY) bench/run_all.py --quick $(BENCH_ARGS)

report: install $(BENCH_STAMP) ## plots and SUMMARY.md from the results already in bench/results/
	$(PY) bench/report.py

clean: down ## stop everything and delete local state (.crawlstream/)
	rm -rf .crawlstream
