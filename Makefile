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

.PHONY: demo test lint install install-dev services chromium clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip

$(VENV)/.app-installed: requirements.txt constraints.txt | $(PY)
	$(PIP) install -qq -r requirements.txt -c constraints.txt
	touch $@

$(VENV)/.dev-installed: requirements-dev.txt $(VENV)/.app-installed
	$(PIP) install -qq -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.app-installed
install-dev: $(VENV)/.dev-installed

services:
	bash deploy/dev/ensure-services.sh

chromium:
	bash deploy/dev/ensure-chromium.sh

demo: install
	DEBUG=$${DEBUG:-1} $(PY) manage.py demo --host $(HOST) --port $(PORT)

test: install-dev services chromium
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
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
