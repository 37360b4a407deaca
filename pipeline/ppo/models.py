"""PPO's four models from two folders: policy and reference from SFT, value model and reward model from the RM.

With `use_peft` both trained models are LoRA adapters, and the frozen ones are the same weights with the
adapters disabled (`reference` and `reward_model` None).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from peft import get_peft_model
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, get_peft_config

from pipeline.configs import PPOConfig
from pipeline.distributed import gathered_for_edit
from pipeline.errors import PipelineError
from pipeline.models import (
    is_adapter,
    load_policy,
    load_scorer,
    load_tokenizer,
    prepare_quantized,
    require_reward_model,
    require_same_vocabulary,
)
from pipeline.precision import hold_frozen, trainable_in_fp32
from pipeline.reward import RewardReader, load_reward_reader


@dataclass
class PPOModels:
    """What `load_models` gives the PPO trainer."""

    tokenizer: PreTrainedTokenizerBase
    policy: PreTrainedModel
    value_model: PreTrainedModel
    reference: PreTrainedModel | None  # None: the LoRA policy with its adapter off
    reward_model: PreTrainedModel | None  # None: the LoRA value model with its adapter off
    reward_reader: RewardReader


def _frozen(model: PreTrainedModel) -> PreTrainedModel:
    model.eval().requires_grad_(False)
    return model


def _without_dropout(model: PreTrainedModel) -> PreTrainedModel:
    """PPO's ratio must be 1 before each update: no dropout in any model, LoRA's included (Huang et al. 2024)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        # Attention dropout is applied functionally in training mode, at a rate each attention module copied
        # from the config (Llama, Qwen2, Mistral: `attention_dropout`); the config, which the published policy
        # carries, keeps the user's rate
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def critic_from_reward_model(args: PPOConfig) -> bool:
    """Whether the value model starts as the reward model and PPO rewards it in normalised units."""
    from_rm = args.value_model_path in (None, args.reward_model_path)
    return from_rm and args.normalize_reward and not args.gold_reward_scale


def with_bias(head: torch.nn.Linear) -> torch.nn.Linear:
    """The head with a trainable bias (a zero one where it had none, as Llama's `score`): the critic's offset."""
    if head.bias is None:
        weight = head.weight
        head.bias = torch.nn.Parameter(torch.zeros(head.out_features, dtype=weight.dtype, device=weight.device))
    return head


@torch.no_grad()
def normalise_score_head(head: torch.nn.Linear, mean: float, std: float) -> None:
    """Rescale a scorer's head in place so that it predicts `(score - mean) / std`, the units of the normalised
    reward: a value model copied from the reward model then starts as that reward's estimate, not std times it."""
    with gathered_for_edit(list(head.parameters())):
        head.weight.div_(std)
        head.bias.sub_(mean).div_(std)


def load_models(args: PPOConfig, model_args: ModelConfig) -> PPOModels:
    """Load and check the models PPO needs, with their adapters when the recipe asks for LoRA."""
    if model_args.model_name_or_path:
        raise PipelineError(
            "the ppo stage reads its models from sft_model_path and reward_model_path, not model_name_or_path"
        )
    trust = args.trust_remote_code
    tokenizer = load_tokenizer(dataclasses.replace(model_args, model_name_or_path=args.sft_model_path), trust)
    require_reward_model(args.reward_model_path, "reward_model_path")
    value_path = args.value_model_path or args.reward_model_path
    for path, what in ((args.reward_model_path, "the reward model"), (value_path, "the value model")):
        require_same_vocabulary(tokenizer, path, what, f"the policy {args.sft_model_path}", trust)
    peft_config = get_peft_config(model_args)
    if peft_config is not None and is_adapter(args.sft_model_path):
        raise PipelineError(
            f"{args.sft_model_path} is a LoRA adapter: a LoRA policy needs full SFT weights to share with its "
            "reference; merge the adapter first, or train the full policy (use_peft: false)"
        )

    # Under bf16, frozen weights (the reward model, a LoRA base) are held in bf16 and trained ones in fp32
    # (pipeline.precision). A full policy's reference stays in the policy's fp32: autocast casts only the
    # matmuls, so a bf16 copy would differ from the policy before any update (KL > 0 at the start)
    policy = load_policy(args.sft_model_path, model_args, trust)
    policy = prepare_quantized(policy, model_args, args.activation_checkpointing)  # QLoRA: a 4-bit base
    reference = None
    if peft_config is None:
        reference = _frozen(load_policy(args.sft_model_path, model_args, trust))
    else:
        policy = hold_frozen(policy, args.bf16)
        policy = get_peft_model(policy, dataclasses.replace(peft_config, task_type="CAUSAL_LM"))

    reward_model = _frozen(load_scorer(args.reward_model_path, model_args, tokenizer.pad_token_id, trust))
    reward_model = hold_frozen(reward_model, args.bf16)
    shared = peft_config is not None and value_path == args.reward_model_path
    value_model = reward_model if shared else load_scorer(value_path, model_args, tokenizer.pad_token_id, trust)
    lora_bf16 = peft_config is not None and args.bf16
    if peft_config is not None:
        value_model = hold_frozen(value_model, args.bf16)  # its base
        value_model = get_peft_model(value_model, dataclasses.replace(peft_config, task_type="SEQ_CLS"))
    return PPOModels(
        tokenizer=tokenizer,
        policy=_without_dropout(trainable_in_fp32(policy, lora_bf16)),
        value_model=_without_dropout(trainable_in_fp32(value_model, lora_bf16)),
        reference=reference,
        reward_model=None if shared else reward_model,
        reward_reader=load_reward_reader(args.reward_model_path, tokenizer, trust),
    )
