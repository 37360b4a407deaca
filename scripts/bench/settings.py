"""What `make bench` runs: the comparisons, their shared settings, and the full and quick sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SANDBOX = ROOT / "recipes" / "sandbox"
SMOLLM2 = ROOT / "recipes" / "smollm2-135m"
SMOLLM2_PPO_RECIPE = SMOLLM2 / "ppo" / "config_smoke.yaml"
TRL112 = "trl==1.12.0"

# Both trainers' PPO settings, keys spelled as in both PPOConfigs but `batch_size`, the episodes per
# update (`batch_keys` spells it for each). One learning rate for policy and value and no reward
# normalisation, since TRL 1.12 has neither a value learning rate nor reward statistics
PPO_FULL = dict(
    total_episodes=192,
    batch_size=64,
    num_mini_batches=4,
    num_ppo_epochs=4,
    local_rollout_forward_batch_size=64,
    response_length=32,
    temperature=1.0,
    learning_rate=5.0e-5,
    lr_scheduler_type="constant",
    kl_coef=0.2,
    kl_estimator="k1",
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    gamma=1.0,
    lam=0.95,
    whiten_rewards=False,
    missing_eos_penalty=1.0,
    seed=0,
)
PPO_QUICK = {
    **PPO_FULL,
    "total_episodes": 16,
    "batch_size": 4,
    "num_mini_batches": 2,
    "num_ppo_epochs": 1,
    "local_rollout_forward_batch_size": 8,
    "response_length": 8,
}


def batch_keys(ppo: dict[str, Any], trl112: bool) -> dict[str, Any]:
    """`ppo` with its rollout size in each trainer's keys.

    Ours rolls out num_mini_batches x per_device_train_batch_size episodes; TRL 1.12 rolls out
    per_device_train_batch_size and cuts them into num_mini_batches.
    """
    keys = {k: v for k, v in ppo.items() if k != "batch_size"}
    per_device = ppo["batch_size"] if trl112 else ppo["batch_size"] // ppo["num_mini_batches"]
    return {**keys, "per_device_train_batch_size": per_device, "gradient_accumulation_steps": 1}


# SmolLM2-135M (49k vocabulary): the same settings at a size these cores run in a minute
PPO_SMOLLM2 = {
    **PPO_FULL,
    "total_episodes": 8,
    "batch_size": 8,
    "num_mini_batches": 2,
    "num_ppo_epochs": 2,
    "local_rollout_forward_batch_size": 8,
    "response_length": 16,
    "learning_rate": 1.0e-5,
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
LORA_LEARNING_RATE = 2.0e-4
# Our recipe keys for the same adapter
LORA_KEYS = {"use_peft": True, **{f"lora_{key.removeprefix('lora_')}": value for key, value in LORA.items()}}
# Trainer runs measure training alone: no checkpoints, evaluation or samples around it
TRAINER_QUIET = dict(
    save_strategy="no",
    eval_strategy="no",
    dataset_test_split=None,
    sandbox_eval_prompts=0,
    include_num_input_tokens_seen=True,  # "all": padding counts too (the recipe parser reads a bool)
    report_to="none",
)


@dataclass(frozen=True)
class Size:
    pairs: int
    sft_steps: int
    rm_steps: int
    ppo: dict[str, Any]
    gold_prompts: int
    max_new_tokens: int
    rollout_batch: int
    rollout_repeats: int
    recipes: dict[str, Path] = field(default_factory=dict)
    precision_steps: int = 10  # SmolLM2 SFT and RM steps in each fp32/bf16 run
    smollm2: bool = True  # SmolLM2 PPO comparisons and memory rows, when it is imported
    memory: bool = True  # LoRA and QLoRA runs


FULL = Size(
    pairs=3,
    sft_steps=100,
    rm_steps=20,
    ppo=PPO_FULL,
    gold_prompts=200,
    max_new_tokens=32,
    rollout_batch=64,
    rollout_repeats=10,
    recipes={stage: SANDBOX / stage / "config_demo.yaml" for stage in ("sft", "rm", "ppo")},
)
QUICK = Size(
    pairs=1,
    sft_steps=3,
    rm_steps=3,
    ppo=PPO_QUICK,
    gold_prompts=8,
    max_new_tokens=8,
    rollout_batch=8,
    rollout_repeats=2,
    recipes={stage: SANDBOX / stage / "config_smoke.yaml" for stage in ("sft", "rm", "ppo")},
    smollm2=False,
    memory=False,
)
