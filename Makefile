# grn — `make demo` and `make test` are all a newcomer needs; both set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pinned so pip takes the local wheels instead of downloading a newer multi-GB CUDA build.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.grn-installed
PYTEST_ARGS ?=
QUICKSTART_CKPT := runs/quickstart/c2i/checkpoints/last.ckpt
STUDIO_ARGS ?=
CHROMIUM ?= /usr/bin/chromium

.DEFAULT_GOAL := help
.PHONY: help install demo studio test test-slow test-all test-cluster test-browser bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install grn with its test tools

demo: $(STAMP) ## train the tiny tokenizer + GRN on real digits, write runs/quickstart/{samples.png,metrics.json}
	$(PY) train.py experiment=quickstart

studio: $(STAMP) ## the studio web page on the quickstart (trains it first if its checkpoint is missing)
	@test -f $(QUICKSTART_CKPT) || $(PY) train.py experiment=quickstart
	$(PY) -m grn.studio ckpt=$(QUICKSTART_CKPT) $(STUDIO_ARGS)

test: $(STAMP) ## the CPU test suite (minutes; excludes tests marked slow, gpu, cluster or browser; installs nothing)
	$(PY) -m pytest -m "not slow and not gpu and not cluster and not browser" $(PYTEST_ARGS)

test-slow: $(STAMP) ## only the tests marked slow (multi-process resume, the GPU check's CPU dry run, ...)
	$(PY) -m pytest -m "slow and not gpu and not cluster and not browser" $(PYTEST_ARGS)

test-all: $(STAMP) ## every CPU test, slow ones included (still no gpu, cluster or browser tests)
	$(PY) -m pytest -m "not gpu and not cluster and not browser" $(PYTEST_ARGS)

test-cluster: $(STAMP) ## the cluster tests: as root, installs slurm-wlm + munge, writes /etc, starts daemons
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

test-browser: $(STAMP) ## the studio in Debian's chromium (as root installs it with apt; pip installs playwright, no browser download)
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "$(CHROMIUM) is missing: as root, apt-get install chromium (the tests skip without it)"; fi; \
	fi
	@$(PY) -c "import playwright" 2>/dev/null || $(PY) -m pip install -q -e '.[browser]'
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

bench: $(STAMP) ## run the benchmarks in bench/ (they print ratios; never part of the tests)
	@for b in bench/[!_]*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean: ## remove caches of Python and pytest (never runs/ or user files)
	find . -name __pycache__ -type d -prune -not -path './$(VENV)/*' -exec rm -rf {} +
	rm -rf .pytest_cache .hypothesis
