# finetune-policy developer tasks. `make test` is what CI runs (.ci/run) on a fresh clone.
# PYTHON picks the interpreter (3.11, 3.12 or 3.13; see scripts/setup.sh), e.g. `make test-core PYTHON=python3.13`.
VENV ?= .venv
CORE_VENV ?= .venv-core
PYTHON ?=
PY := $(VENV)/bin/python

.PHONY: setup setup-light test test-fast test-core lint bench decide clean

$(VENV)/.installed: pyproject.toml setup.py scripts/setup.sh
	PYTHON="$(PYTHON)" VENV="$(VENV)" scripts/setup.sh full
	touch $@

setup: $(VENV)/.installed            ## full install: decision CLI + training stack + dev tools

setup-light:                         ## decision CLI only (no torch)
	PYTHON="$(PYTHON)" VENV="$(VENV)" scripts/setup.sh light

test: setup                          ## the whole suite, as CI runs it
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup                     ## skip the training tests
	$(PY) -m pytest -q -m "not train"

test-core:                           ## the decision-core tests in $(CORE_VENV): no training stack, any Python 3.11-3.13
	PYTHON="$(PYTHON)" VENV="$(CORE_VENV)" scripts/setup.sh dev
	$(CORE_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not train"

lint: setup
	$(VENV)/bin/ruff check ruleengine executors tests bench setup.py
	$(VENV)/bin/mypy

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

decide: setup                        ## the main job on the bundled default policy
	$(VENV)/bin/decide --model-params 13B --gpu a100-80gb --gpus 1 --examples 50k --use-case domain_qa --no-audit

clean:
	rm -rf $(VENV) $(CORE_VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
