"""The ppo stage end to end on the smoke recipes: full, LoRA, PPO-ptx, and a resumed run."""

import json

import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from pipeline import reward
from pipeline.cli import main
from pipeline.ppo import trainer as ppo_trainer
from pipeline.ppo.trainer import PPOTrainer
from tests.conftest import log, metrics, ppo_args

DIAGNOSTICS = {
    "val/explained_variance",
    "policy/grad_norm",
    "value/grad_norm",
    "policy/ratio_mean",
    "policy/ratio_max",
    "objective/rm_gold_spearman",
    "prompts/name_word",
}


def check_comparison(found: dict, prompts: int) -> None:
    """PPO's end-of-run comparison: the eval stage's metrics for `ppo` and `sft`, each mean inside its interval."""
    evaluation = found["eval"]
    assert evaluation["prompts"] == prompts and evaluation["names"] == ["ppo", "sft", "rule"]
    for name in ("ppo", "sft"):
        for key in ("gold", "gold_sampled", "rm_score", "rm_score_sampled", "kl_to_reference"):
            figure = evaluation["policies"][name][key]
            assert figure["ci"][0] <= figure["mean"] <= figure["ci"][1], (name, key)
    assert evaluation["policies"]["ppo"]["kl_to_reference"]["mean"] != 0  # k1 on one sample: either sign
    assert evaluation["policies"]["sft"]["kl_to_reference"]["mean"] == 0
    win = evaluation["gold_win_rate"]["ppo"]["sft"]
    assert 0 <= win["ci"][0] <= win["mean"] <= win["ci"][1] <= 1
    assert found["ptx_loss"] > 0 and found["ptx_loss_sft"] > 0


def test_full_ppo_writes_a_loadable_policy_metrics_and_a_step_log(full_run, models):
    found = metrics(full_run)
    assert found["train_steps"] == 4 and found["episodes"] == 64
    check_comparison(found, 28)
    # Balanced prompts: 64 episodes over 7 families, drawn uniformly from a list that holds each equally often
    mix = found["trained_family_mix"]
    assert len(mix) == 7 and sum(mix.values()) == 64 and max(mix.values()) < 0.4 * 64
    steps = log(full_run)
    assert all(set(s) >= DIAGNOSTICS for s in steps)
    assert all(sum(v for k, v in s.items() if k.startswith("prompts/")) == pytest.approx(1) for s in steps)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    # sampling log-probs and the reference pass agree before the first update: the KL starts at ~0
    assert abs(steps[0]["objective/kl"]) < 1e-3
    assert all("objective/gold" in s for s in steps)
    assert not list(full_run.glob("checkpoint-*")) and not full_run.with_name("full.partial").exists()
    trained = AutoModelForCausalLM.from_pretrained(full_run)
    sft = AutoModelForCausalLM.from_pretrained(models[0])
    changed = [not torch.equal(a, b) for a, b in zip(trained.parameters(), sft.parameters(), strict=True)]
    assert any(changed)
    samples = [json.loads(line) for line in (full_run / "ppo_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 28
    assert {"prompt", "family", "sft", "ppo", "gold_sft", "gold_ppo", "rm_sft", "rm_ppo"} <= set(samples[0])


def test_lora_policy_and_value_share_weights_with_reference_and_reward(models, tmp_path):
    out = tmp_path / "lora"
    assert main(ppo_args(models, out, use_peft="true", lora_r=8, lora_alpha=16, learning_rate=1e-3)) == 0
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    steps = log(out)
    assert abs(steps[0]["objective/kl"]) < 1e-3  # adapter off = the SFT policy itself
    check_comparison(metrics(out), 28)
    policy = AutoPeftModelForCausalLM.from_pretrained(out)
    assert policy.peft_config["default"].r == 8


def test_the_linear_schedule_counts_optimiser_steps(full_run):
    # 4 updates x (2 epochs x 2 mini-batches) = 16 optimiser steps, 2 of warmup: the rate after update k
    # is 1e-4 x (16 - 4k) / 14
    rates = [s["lr"] for s in log(full_run)]
    assert rates == pytest.approx([1e-4 * (16 - 4 * k) / 14 for k in (1, 2, 3, 4)], abs=1e-12)


def test_lora_ppo_has_no_dropout_and_scores_in_eval_mode(models, tmp_path, monkeypatch):
    """LoRA dropout 0.05 (ModelConfig's default) is switched off, so each update starts at ratio 1."""
    seen: dict[str, list] = {"dropout": [], "scoring_in_train_mode": []}
    train = PPOTrainer.train

    def inspect_then_train(self):
        seen["dropout"] = [m.p for m in self.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert self.sampling_generator.device == self.accelerator.device
        return train(self)

    def recording(function):
        def passes(model, *args, **kwargs):
            if not torch.is_grad_enabled():  # rollout passes; the learning passes need train mode
                seen["scoring_in_train_mode"].append(model.training)
            return function(model, *args, **kwargs)

        return passes

    monkeypatch.setattr(PPOTrainer, "train", inspect_then_train)
    for name in ("response_logprobs", "response_values"):
        monkeypatch.setattr(ppo_trainer, name, recording(getattr(ppo_trainer, name)))
    monkeypatch.setattr(reward, "reward_scores", recording(reward.reward_scores))
    out = tmp_path / "lora_dropout"
    lora = {"use_peft": "true", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "learning_rate": 1e-3}
    # One optimiser step per update: each update's statistics are those of the rollout's own policy
    one_step = {"num_ppo_epochs": 1, "num_mini_batches": 1, "total_episodes": 32}
    assert main(ppo_args(models, out, **lora, **one_step)) == 0
    assert seen["dropout"] and set(seen["dropout"]) == {0.0}
    assert seen["scoring_in_train_mode"] and not any(seen["scoring_in_train_mode"])
    steps = log(out)
    assert len(steps) == 4
    for step in steps:
        assert step["policy/approxkl"] < 1e-10 and step["policy/clipfrac_avg"] == 0, step["step"]


def test_bad_ppo_recipes_exit_2_naming_the_problem(models, tmp_path, capsys):
    assert main(ppo_args(models, tmp_path / "x", ptx_coef=0.5, ptx_dataset_card="null")) == 2
    assert "ptx_dataset_card" in capsys.readouterr().err
    assert main(ppo_args(models, tmp_path / "x", kl_estimator="k2")) == 2
    assert "kl_estimator" in capsys.readouterr().err
    missing = tmp_path / "missing"
    assert main(ppo_args(models, tmp_path / "x", reward_model_path=missing, normalize_reward="false")) == 2
    assert str(missing) in capsys.readouterr().err


def test_gold_reward_diagnostic_scores_rollouts_with_the_judge(models, tmp_path):
    out = tmp_path / "gold"
    args = ppo_args(models, out, gold_reward_scale=4.0, missing_eos_penalty="null", total_episodes=32)
    assert main(args) == 0
    for step in log(out):
        assert step["objective/normalized_scores"] == pytest.approx(4.0 * step["objective/gold"], rel=1e-5)
