# Two commands for a newcomer: `make run` (the assistant and its web chat) and `make test` (every test).
# Both create .venv with Python 3.10, install the locked dependencies, train the model only when its
# inputs changed, and migrate and seed the database.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
RASA   := $(VENV)/bin/rasa
MODEL  := models/current.tar.gz
# What the trained model depends on: changing any of these retrains, nothing else does.
TRAIN_INPUTS := config.yml domain.yml bot/mentions.py data/hospital/departments.yml data/hospital/doctors.yml \
                $(shell find data/nlu data/dialogue data/jieba nlu -type f \
                  \( -name '*.yml' -o -name '*.txt' -o -name '*.py' \) 2>/dev/null)

export TF_CPP_MIN_LOG_LEVEL ?= 2
export RASA_TELEMETRY_ENABLED ?= false
export SQLALCHEMY_SILENCE_UBER_WARNING ?= 1
export PYTHONDONTWRITEBYTECODE ?= 1

.PHONY: help setup venv train db run test test-fast lint bench clean

help:
	@echo "make run    - set up, train if needed, start the assistant and print the web chat URL"
	@echo "make test   - set up, train if needed, run every test (CI runs this)"
	@echo "make lint   - ruff"
	@echo "make bench  - benchmarks (see bench/README.md)"

$(VENV)/.installed: pyproject.toml constraints.txt scripts/find-python.sh
	@py=$$(scripts/find-python.sh) || exit 1; \
	  if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$py"; "$$py" -m venv $(VENV) || exit 1; fi
	$(PY) -m pip install --quiet --disable-pip-version-check "pip>=23,<25"
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	@touch $@

venv: $(VENV)/.installed

$(MODEL): $(VENV)/.installed $(TRAIN_INPUTS)
	$(RASA) train --data data/nlu data/dialogue --fixed-model-name current --out models
	@touch $@

# The triage department model (bot/triage/departments.py): named by a digest of its data, so this is a no-op
# while data/triage is unchanged.
train: $(MODEL)
	$(PY) -m bot.triage.departments

# Migrations, then demo data; the seed is idempotent and adds whatever the next 14 days lack.
db: $(VENV)/.installed
	$(PY) -m bot.db upgrade
	$(PY) -m bot.seed

setup: venv train db

run: setup
	@scripts/run.sh

test: setup
	@scripts/test.sh

test-fast: venv
	$(PY) -m pytest -m "not slow" -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check bot actions channels nlu scheduler tests bench sandbox

bench: setup
	$(PY) -m bench.all

clean:
	rm -rf models .rasa var/*.sqlite* .pytest_cache
