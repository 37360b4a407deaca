"""A Hub model through PPO with the Qwen2.5 recipe: policy and reward model as local folders in Hub format
(`save_pretrained` only: no recipe.yaml, no metrics.json), rewards normalised from the first rollout."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

from pipeline.cli import main
from pipeline.ppo.trainer import PPOTrainer
from pipeline.sandbox.tokenizer import train_tokenizer
from tests.conftest import ROOT, log, metrics
from tests.test_reward_readout import CHATML

RECIPE = ROOT / "recipes/qwen2.5-0.5b/ppo/config_lora.yaml"


@pytest.fixture(scope="module")
def hub_folders(tmp_path_factory):
    """A tiny Qwen2 policy and a Qwen2 reward model with a ChatML tokenizer, saved as a Hub repository is."""
    folder = tmp_path_factory.mktemp("hub")
    texts = [f"Reverse the word {w}. {w[::-1]} Sure! Add {i} and {i + 1}." for i, w in enumerate(["cat", "dog"] * 50)]
    tokenizer = train_tokenizer(texts, 1)
    tokenizer.chat_template = CHATML
    shape = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape
    )
    torch.manual_seed(0)
    for name, model in (
        ("policy", Qwen2ForCausalLM(config)),
        ("reward", Qwen2ForSequenceClassification(Qwen2Config(num_labels=1, **config.to_dict()))),
    ):
        model.save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    return folder


def test_ppo_normalises_a_hub_reward_model_by_its_first_rollout_and_resumes_with_the_same_statistics(
    hub_folders, tmp_path, caplog, monkeypatch
):
    out = tmp_path / "ppo"
    argv = ["ppo", "--config", str(RECIPE), "--sft_model_path", str(hub_folders / "policy")]
    argv += ["--reward_model_path", str(hub_folders / "reward"), "--output_dir", str(out)]
    # CPU-sized: sandbox prompts instead of hh-rlhf from the Hub, fp32, 3 updates of 8 episodes
    argv += ["--dataset_card", "data_cards/sandbox_prompts.md", "--dataset_train_split", "ppo"]
    argv += ["--dataset_test_split", "validation", "--max_eval_samples", "8", "--sandbox_eval_prompts", "0"]
    argv += ["--bf16", "false", "--use_cpu", "true", "--report_to", "none", "--lora_target_modules", "q_proj", "v_proj"]
    argv += ["--total_episodes", "24", "--per_device_train_batch_size", "4", "--num_mini_batches", "2"]
    argv += ["--num_ppo_epochs", "1", "--local_rollout_forward_batch_size", "8", "--response_length", "6"]
    argv += ["--max_prompt_length", "48", "--save_steps", "1", "--sandbox_eval_batch_size", "8"]
    rollout = PPOTrainer.rollout

    def stopped_at_the_third(trainer, step):
        if step == 2:
            raise KeyboardInterrupt
        return rollout(trainer, step)

    # Stopped after two updates (checkpoint-2), then run again: it resumes with the checkpoint's statistics
    monkeypatch.setattr(PPOTrainer, "rollout", stopped_at_the_third)
    assert main(argv) == 130
    monkeypatch.setattr(PPOTrainer, "rollout", rollout)
    with caplog.at_level("INFO"):
        assert main(argv) == 0
    found = metrics(out)
    steps = log(out)
    assert "resumed from" in caplog.text and found["train_steps"] == 3 and len(steps) == 3
    assert found["reward_stats"]["from"] == "the first rollout"
    # The mean is the first rollout's mean RM score (not the resumed run's first), and that rollout's
    # normalised scores average 0 less the EOS penalty
    assert found["reward_stats"]["mean"] == pytest.approx(steps[0]["objective/rm_score"], abs=1e-6)
    assert found["reward_stats"]["mean"] != pytest.approx(steps[2]["objective/rm_score"], abs=1e-6)
    eos_penalty = 1.0 * (1 - steps[0]["val/eos_fraction"])
    assert steps[0]["objective/normalized_scores"] == pytest.approx(-eos_penalty, abs=1e-5)
    assert (out / "adapter_config.json").is_file() and "ppo" in found["eval"]["policies"]
