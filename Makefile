# finetune-policy developer tasks. `make test` is what CI runs (.ci/run) on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup setup-light test test-fast lint bench decide clean

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	scripts/setup.sh full
	touch $@

setup: $(VENV)/.installed            ## full install: decision CLI + training stack + dev tools

setup-light:                         ## decision CLI only (no torch)
	scripts/setup.sh light

test: setup                          ## the whole suite, as CI runs it
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: setup                     ## skip the training tests
	$(PY) -m pytest -q -m "not train"

lint: setup
	$(VENV)/bin/ruff check ruleengine executors tests bench
	$(VENV)/bin/mypy

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b; done

decide: setup                        ## the main job on the bundled default policy
	$(VENV)/bin/decide --model-params 13B --gpu a100-80gb --gpus 1 --examples 50k --use-case domain_qa --no-audit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
