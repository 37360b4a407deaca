"""RLOO and GRPO with TRL's own trainers, on the same prompts and reward model as our PPO.

Both sample several responses per prompt and use the others' rewards as the baseline, so they need
no value model. The reward model is their reward function, reading each answer as in every other
stage (`pipeline.reward.reward_conversations`); in the sandbox the gold judge rides along with weight 0, so its
score is logged (`rewards/gold/mean`) without steering the training.
"""

from __future__ import annotations

import logging
from collections import Counter

from transformers import PreTrainedModel, set_seed
from trl import GRPOConfig, GRPOTrainer, ModelConfig, RLOOConfig, RLOOTrainer, get_peft_config

from pipeline.configs import RewardModelArguments, ScriptArguments
from pipeline.data import load_card
from pipeline.errors import PipelineError
from pipeline.models import (
    load_causal_lm,
    load_scorer,
    load_tokenizer,
    require_reward_model,
    require_same_vocabulary,
)
from pipeline.reward import RewardReader, load_reward_reader, response_rewards
from pipeline.sampling import plain
from pipeline.sandbox.evaluation import balanced_indices, family, gold_rewards, is_sandbox
from pipeline.stages.common import start_work, train_evaluate_save

logger = logging.getLogger(__name__)


def _reward_model_reward(scorer: PreTrainedModel, reader: RewardReader):
    """The reward model as a TRL reward function (logged as `rewards/reward_model`), reading what it was trained on."""

    def reward_model(prompts: list[list[dict]], completions: list[list[dict]], **_) -> list[float]:
        return response_rewards(plain(scorer), reader, prompts, [c[0]["content"].strip() for c in completions])

    return reward_model


def _gold_reward(eos_token_id: int):
    """The sandbox judge as a TRL reward function (conversational prompts and completions)."""

    def gold(prompts: list[list[dict]], completions: list[list[dict]], completion_ids: list[list[int]], **_) -> list:
        finished = [eos_token_id in ids for ids in completion_ids]
        return gold_rewards(prompts, [c[0]["content"] for c in completions], finished)

    return gold


TRAINERS = {RLOOConfig: ("rloo", RLOOTrainer), GRPOConfig: ("grpo", GRPOTrainer)}


def run(
    script_args: ScriptArguments,
    model_args: ModelConfig,
    reward_args: RewardModelArguments,
    training_args: RLOOConfig | GRPOConfig,
    recipe: dict,
) -> dict:
    stage, trainer_class = TRAINERS[type(training_args)]
    # Output folder: work happens in <output_dir>.partial, resumed when the recipe is unchanged
    work, resume, output_dir = start_work(training_args, stage, recipe)

    # Data: the prompts only (TRL passes any other column to the reward functions)
    prompts, _ = load_card(
        script_args.dataset_card, script_args.dataset_train_split, script_args.data_files, script_args.max_train_samples
    )
    if "prompt" not in prompts.column_names:
        raise PipelineError(f"{script_args.dataset_card}: the {stage} stage needs a prompts card (a prompt column)")
    prompts = prompts.select_columns(["prompt"])
    sandbox = is_sandbox(prompts["prompt"])
    family_mix = None
    if sandbox and script_args.balance_families:
        prompts = prompts.select(balanced_indices(prompts["prompt"]))
    if sandbox:
        # TRL's sampler draws uniformly from these prompts: their mix is what the run trains on, in expectation
        family_mix = dict(sorted(Counter(family(p) for p in prompts["prompt"]).items()))
        logger.info("%d prompts, by task family: %s", len(prompts), family_mix)

    # Models: the SFT policy (full or LoRA) and the frozen reward model, plus the gold judge in the sandbox
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    require_reward_model(reward_args.reward_model_path, "reward_model_path")
    require_same_vocabulary(
        tokenizer,
        reward_args.reward_model_path,
        "the reward model",
        f"the policy {model_args.model_name_or_path}",
        training_args.trust_remote_code,
    )
    set_seed(training_args.seed)
    policy = load_causal_lm(model_args, training_args.trust_remote_code)
    reward_model = load_scorer(
        reward_args.reward_model_path, model_args, tokenizer.pad_token_id, training_args.trust_remote_code
    )
    reader = load_reward_reader(reward_args.reward_model_path, tokenizer, training_args.trust_remote_code)
    reward_funcs, reward_tokenizers = [_reward_model_reward(reward_model, reader)], [None]
    if sandbox:
        reward_funcs.append(_gold_reward(tokenizer.eos_token_id))
        reward_tokenizers.append(None)
        training_args.reward_weights = [1.0, 0.0]

    # Train, evaluate, save
    trainer = trainer_class(
        model=policy,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=prompts,
        processing_class=tokenizer,
        reward_processing_classes=reward_tokenizers,
        peft_config=get_peft_config(model_args),
    )
    reward_model.to(trainer.accelerator.device)
    evaluate = (lambda _: {"prompt_family_mix": family_mix}) if family_mix else None
    return train_evaluate_save(trainer, tokenizer, script_args, work, resume, output_dir, evaluate)
