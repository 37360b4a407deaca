"""PPO's models on tiny random Llamas: the critic rescaled into the normalised reward's units, no dropout."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from pipeline.ppo.models import _without_dropout, normalise_score_head, with_bias
from pipeline.scoring import token_scores, trained_score_head

CONFIG = {
    "vocab_size": 32,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "pad_token_id": 0,
}
IDS = torch.randint(1, 32, (3, 7), generator=torch.Generator().manual_seed(0))


def scorer() -> LlamaForSequenceClassification:
    torch.manual_seed(0)
    return LlamaForSequenceClassification(LlamaConfig(**CONFIG, num_labels=1)).eval()


@torch.no_grad()
def scores(model: torch.nn.Module) -> torch.Tensor:
    return token_scores(model, IDS, torch.ones_like(IDS))


def test_the_rescaled_head_predicts_the_normalised_score_at_every_token():
    model = scorer()
    raw = scores(model)
    assert model.score.bias is None  # Llama's head has no bias: the critic gets one for the mean
    normalise_score_head(with_bias(model.score), mean=0.3, std=2.5)
    torch.testing.assert_close(scores(model), (raw - 0.3) / 2.5)
    assert model.score.bias.requires_grad


def test_with_lora_only_the_value_adapters_copy_of_the_head_is_rescaled():
    """The reward is the same weights with the adapter off: it must keep the reward model's raw score."""
    model = get_peft_model(scorer(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
    raw = scores(model)
    head = with_bias(trained_score_head(model))
    assert head is not model.base_model.model.score.original_module
    normalise_score_head(head, mean=-1.0, std=0.5)
    torch.testing.assert_close(scores(model), (raw + 1.0) / 0.5)
    with model.disable_adapter():
        torch.testing.assert_close(scores(model), raw)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_dropout_from_the_config_is_switched_off(implementation):
    """PPO learns in training mode, where attention dropout (a rate, not a module) would change the ratio."""
    torch.manual_seed(0)
    config = LlamaConfig(**CONFIG, attention_dropout=0.3, attn_implementation=implementation)
    model = LlamaForCausalLM(config).train()
    frozen = copy.deepcopy(model).eval()
    with torch.no_grad():
        assert not torch.equal(model(IDS).logits, frozen(IDS).logits)  # dropout is on
        _without_dropout(model)
        torch.testing.assert_close(model(IDS).logits, frozen(IDS).logits)
    assert model.config.attention_dropout == 0.3  # what a published full policy's config.json keeps
