# Two commands on a fresh machine: `make demo` (the sandbox chain) and `make test`.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?=
ARGS ?=
DEMO := outputs/demo

.PHONY: setup base sft label rm eval-rm ppo ppo-ptx demo test lint clean-demo

setup: $(STAMP)

# Reinstalls only when requirements.txt changes.
$(STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $(STAMP)

# `make base` / `make sft` run the demo recipes; RECIPE=path ARGS="--key value" run any recipe.
base: setup
	$(PYTHON) -m pipeline base --config $(or $(RECIPE),recipes/sandbox/base/config_demo.yaml) $(ARGS)

sft: setup $(if $(RECIPE),,$(DEMO)/base/metrics.json)
	$(PYTHON) -m pipeline sft --config $(or $(RECIPE),recipes/sandbox/sft/config_demo.yaml) $(ARGS)

label: setup $(if $(RECIPE),,$(DEMO)/sft/metrics.json)
	$(PYTHON) -m pipeline label --config $(or $(RECIPE),recipes/sandbox/label/config_demo.yaml) $(ARGS)

rm: setup $(if $(RECIPE),,$(DEMO)/comparisons/metrics.json)
	$(PYTHON) -m pipeline rm --config $(or $(RECIPE),recipes/sandbox/rm/config_demo.yaml) $(ARGS)

# `make ppo` / `make ppo-ptx`; RECIPE=recipes/sandbox/ppo/config_lora.yaml for the LoRA policy and value model.
ppo: setup $(if $(RECIPE),,$(DEMO)/rm/metrics.json)
	$(PYTHON) -m pipeline ppo --config $(or $(RECIPE),recipes/sandbox/ppo/config_demo.yaml) $(ARGS)

ppo-ptx: setup $(if $(RECIPE),,$(DEMO)/rm/metrics.json)
	$(PYTHON) -m pipeline ppo --config $(or $(RECIPE),recipes/sandbox/ppo/config_ptx.yaml) $(ARGS)

# `make eval-rm RUN=outputs/demo/rm_lora`
eval-rm: setup
	$(PYTHON) -m pipeline eval-rm $(or $(RUN),$(DEMO)/rm) $(ARGS)

# The demo chain: each stage reruns when its recipe or its input changed.
$(DEMO)/base/metrics.json: recipes/sandbox/base/config_demo.yaml | $(STAMP)
	$(PYTHON) -m pipeline base --config $<

$(DEMO)/sft/metrics.json: recipes/sandbox/sft/config_demo.yaml $(DEMO)/base/metrics.json | $(STAMP)
	$(PYTHON) -m pipeline sft --config $<

$(DEMO)/comparisons/metrics.json: recipes/sandbox/label/config_demo.yaml $(DEMO)/sft/metrics.json | $(STAMP)
	$(PYTHON) -m pipeline label --config $<

$(DEMO)/rm/metrics.json: recipes/sandbox/rm/config_demo.yaml $(DEMO)/comparisons/metrics.json | $(STAMP)
	$(PYTHON) -m pipeline rm --config $<

$(DEMO)/ppo/metrics.json: recipes/sandbox/ppo/config_demo.yaml $(DEMO)/rm/metrics.json | $(STAMP)
	$(PYTHON) -m pipeline ppo --config $<

demo: $(DEMO)/ppo/metrics.json
	$(PYTHON) -m pipeline summary $(DEMO)

test: setup
	$(PYTHON) -m pytest -q tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf $(DEMO)
