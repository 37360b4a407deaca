"""PPO's optimiser, batch sizes and sampling generator: the recipe's settings, Trainer's parameter groups, the
model's device."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from pipeline.configs import PPOConfig
from pipeline.ppo.trainer import create_optimizer
from pipeline.sampling import sampling_generator

TINY = LlamaConfig(
    vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, pad_token_id=0
)


def ppo_config(tmp_path, **values) -> PPOConfig:
    return PPOConfig(output_dir=str(tmp_path), sft_model_path="sft", reward_model_path="rm", **values)


@pytest.fixture
def models():
    torch.manual_seed(0)
    return LlamaForCausalLM(TINY), LlamaForSequenceClassification(TINY)


def test_the_optimiser_takes_the_recipes_settings_and_trainers_groups(tmp_path, models):
    policy, value_model = models
    args = ppo_config(
        tmp_path,
        optim="adamw_torch",
        adam_beta1=0.8,
        adam_beta2=0.95,
        adam_epsilon=1e-6,
        weight_decay=0.1,
        learning_rate=1e-5,
        value_learning_rate=1e-3,
    )
    optimizer = create_optimizer(args, policy, value_model)
    assert type(optimizer) is torch.optim.AdamW
    names = {
        id(p): (owner, n) for owner, m in (("policy", policy), ("value", value_model)) for n, p in m.named_parameters()
    }
    seen = []
    for group in optimizer.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-6
        for param in group["params"]:
            owner, name = names[id(param)]
            seen.append(id(param))
            assert group["lr"] == (1e-5 if owner == "policy" else 1e-3), name
            no_decay = "norm" in name or name.endswith("bias")
            assert group["weight_decay"] == (0.0 if no_decay else 0.1), name
    assert sorted(seen) == sorted(names)  # every trainable weight once
    # the norms' weights are in a group without decay, the projections in one with it
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.1}


def test_the_optimiser_follows_optim(tmp_path, models):
    optimizer = create_optimizer(ppo_config(tmp_path, optim="sgd", learning_rate=0.1), *models)
    assert type(optimizer) is torch.optim.SGD


def test_frozen_weights_are_not_optimised(tmp_path, models):
    policy, value_model = models
    policy.requires_grad_(False)
    optimizer = create_optimizer(ppo_config(tmp_path, optim="adamw_torch"), policy, value_model)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len(list(value_model.parameters()))


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))],
)
def test_the_sampling_generator_is_on_the_logits_device(device):
    generator = sampling_generator(torch.device(device), 3)
    logits = torch.randn(4, 8, device=device)
    assert generator.device.type == logits.device.type
    drawn = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
    again = torch.multinomial(torch.softmax(logits, -1), 1, generator=sampling_generator(torch.device(device), 3))
    assert torch.equal(drawn, again)  # seeded: the same draws


def test_the_batch_arithmetic_is_the_configs_in_trls_names(tmp_path):
    args = ppo_config(
        tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, num_mini_batches=3, total_episodes=100
    )
    # one process: 4 x 2 episodes a step, 3 steps a rollout of 24, ceil(100 / 24) rollouts
    assert (args.mini_batch_size, args.local_batch_size, args.batch_size, args.num_updates) == (8, 24, 24, 5)
