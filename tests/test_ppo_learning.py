"""Tests that fail when PPO stops learning: each names the mutation of pipeline/ppo/ it was seen to catch
(scripts/mutations.py runs them; docs/results.md lists the outcome).

The smoke reward model does not learn the smoke comparisons in a test's budget (held-out accuracy 0.45-0.54:
they mix correctness, sloppiness and labeler noise), so the tests of the PPO machinery reward the sandbox's
gold judge directly (`gold_reward_scale`): the signal is then known, and so is which way learning must move
it. A reward model that learns in seconds (the style comparisons) is tested with RLOO and GRPO in
test_online_rl.py.
"""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main
from pipeline.ppo.trainer import PPOTrainer
from pipeline.scoring import response_values, token_scores, trained_score_head
from tests.conftest import log, metrics, ppo_args

# 8 updates of 16 episodes on the gold judge, judged on 70 held-out prompts (4 sampled answers each)
GOLD = {
    "gold_reward_scale": 4.0,
    "learning_rate": 3e-4,
    "kl_coef": 0.01,
    "total_episodes": 128,
    "sandbox_eval_prompts": 70,
    "sandbox_eval_batch_size": 70,
    "sandbox_eval_samples": 4,
}


class Stop(Exception):
    """Raised by a test's stand-in for `PPOTrainer.train` once it has seen what it checks: the stage goes no further."""


@pytest.fixture(scope="module")
def gold_run(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("learning") / "gold"
    assert main(ppo_args(models, out, **GOLD)) == 0
    return out


def test_ppo_raises_the_reward_it_is_given(gold_run):
    """Catches: the advantages negated before the policy loss (the policy then moves away from gold)."""
    difference = metrics(gold_run)["eval"]["gold_sampled_difference"]["ppo"]["sft"]
    # Measured at seed 0: +0.115 [+0.081, +0.149] (paired by prompt); with the advantages negated it fails
    assert difference["mean"] > 0.05 and difference["ci"][0] > 0.02, difference


def test_the_ratio_compares_the_learning_policy_with_the_rollouts(gold_run):
    """Catches: the old log-probs replaced by the new ones (ratio 1, so nothing is ever clipped)."""
    steps = log(gold_run)
    # 2 epochs of 2 mini-batches per update: every step after an update's first sees a moved policy
    assert all(s["policy/approxkl"] > 1e-7 for s in steps)
    assert sum(s["policy/clipfrac_avg"] > 0 for s in steps) >= len(steps) // 2


def test_the_critic_learns_the_returns(gold_run):
    """Catches: the value loss never added (the value model then keeps the reward model's head)."""
    losses = [s["loss/value_avg"] for s in log(gold_run)]
    # The reward model's head knows nothing of gold: its loss falls as it learns (at seed 0 the first three
    # updates' mean 0.85, the last three's 0.35)
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses
    assert all(s["value/grad_norm"] > 0 for s in log(gold_run))


def test_ptx_pulls_the_policy_towards_the_pretraining_text(models, tmp_path):
    """Catches: the ptx loss never added (the run then equals its ptx_coef 0 twin)."""
    runs = {}
    for coef in (0.0, 1.0):
        out = runs[coef] = tmp_path / f"ptx_{coef}"
        assert main(ppo_args(models, out, ptx_coef=coef, learning_rate=3e-4, total_episodes=32)) == 0
    with_ptx, twin = metrics(runs[1.0]), metrics(runs[0.0])
    # Held-out pretraining text: 2.96 against the twin's 3.18 at seed 0 (7% lower)
    assert with_ptx["ptx_loss"] < 0.98 * twin["ptx_loss"], (with_ptx["ptx_loss"], twin["ptx_loss"])
    assert all(s["loss/ptx"] > 0 for s in log(runs[1.0]))
    weights, twin_weights = load_file(runs[1.0] / "model.safetensors"), load_file(runs[0.0] / "model.safetensors")
    assert any(not torch.equal(weights[name], twin_weights[name]) for name in weights)


def test_with_lora_the_reward_stays_the_frozen_rm_while_the_value_adapter_learns(models, tmp_path, monkeypatch):
    """Catches: the reward read with the value adapter on (the reward would then drift as the critic trains)."""
    seen = {}
    train = PPOTrainer.train

    def around(self):
        prompts, answers = self.prompts[:6], ["7", "Sure! 7 Hope this helps!", "seven", "the", "7 7", ""]
        head = trained_score_head(self.value_model)
        seen["reward"], seen["head"] = self.rm_scores(prompts, answers), head.weight.detach().clone()
        train(self)
        seen["reward_after"], seen["head_after"] = self.rm_scores(prompts, answers), head.weight.detach()
        raise Stop

    monkeypatch.setattr(PPOTrainer, "train", around)
    lora = {"use_peft": "true", "lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-3, "total_episodes": 32}
    with pytest.raises(Stop):
        main(ppo_args(models, tmp_path / "lora", **lora))
    torch.testing.assert_close(seen["reward_after"], seen["reward"], rtol=0, atol=0)
    assert (seen["head_after"] - seen["head"]).abs().max() > 1e-4


@pytest.mark.parametrize(
    ("use_peft", "stats"), [("false", "rm"), ("true", "rm"), ("false", "first_rollout"), ("true", "first_rollout")]
)
def test_the_critic_starts_as_the_normalised_reward(use_peft, stats, models, tmp_path, monkeypatch):
    """Catches: the value model's head left in the reward model's raw units under normalize_reward (with the RM's
    statistics, at load; without them, as a Hub RM, once the first rollout has given them)."""
    sft, rm = models
    if stats == "first_rollout":
        rm = shutil.copytree(rm, tmp_path / "hub_rm")
        found = metrics(rm)
        del found["reward_mean"], found["reward_std"]
        (rm / "metrics.json").write_text(json.dumps(found))
    seen = {}

    def first_values(self):
        if stats == "first_rollout":
            assert self.reward_stats is None
            rollout, _ = self.rollout(0)
            # that rollout's values were read before the statistics existed: rescaled with the head
            with torch.no_grad():
                now = response_values(
                    self.value_model, rollout.queries, rollout.query_mask, rollout.responses, rollout.mask
                )
            torch.testing.assert_close(now * rollout.mask, rollout.values, rtol=1e-5, atol=1e-5)
        ids = torch.tensor([self.query_ids[0] + [5, 6, 7]])  # a prompt and three response tokens
        mask = torch.ones_like(ids)
        reward, disabled = self.reward()
        with torch.no_grad(), disabled():
            seen["reward"] = token_scores(reward, ids, mask)
        with torch.no_grad():
            seen["value"] = token_scores(self.value_model, ids, mask)
        seen["stats"] = self.reward_stats
        raise Stop

    monkeypatch.setattr(PPOTrainer, "train", first_values)
    with pytest.raises(Stop):
        main(ppo_args((sft, rm), tmp_path / "critic", use_peft=use_peft, lora_r=8, lora_alpha=16))
    mean, std = seen["stats"]
    assert std != pytest.approx(1.0, abs=0.05)  # the units differ enough to tell
    torch.testing.assert_close(seen["value"], (seen["reward"] - mean) / std)


def test_a_critic_warm_up_trains_the_value_model_alone(models, tmp_path, monkeypatch):
    """Catches: the policy trained during the warm-up (its loss or its learning rate left on)."""
    seen = {}
    learn = PPOTrainer.learn

    def around(self, rollout):
        if self.step == 0:
            seen["policy"] = {n: p.detach().clone() for n, p in self.policy.named_parameters()}
            seen["head"] = trained_score_head(self.value_model).weight.detach().clone()
        stats = learn(self, rollout)
        if self.step == 1:  # the second update, the warm-up's last
            seen["policy_after"] = dict(self.policy.named_parameters())
            seen["head_after"] = trained_score_head(self.value_model).weight.detach()
            raise Stop
        return stats

    monkeypatch.setattr(PPOTrainer, "learn", around)
    # 2 warm-up updates of 3; weight decay would move a policy whose learning rate were left on
    warmup = {"critic_warmup_updates": 2, "total_episodes": 48, "learning_rate": 3e-4, "weight_decay": 0.1}
    with pytest.raises(Stop):
        main(ppo_args(models, tmp_path / "warmup", **warmup))
    for name, before in seen["policy"].items():
        assert torch.equal(seen["policy_after"][name], before), name
    assert (seen["head_after"] - seen["head"]).abs().max() > 1e-4
    steps = log(tmp_path / "warmup.partial")
    assert len(steps) == 1 and steps[0]["value/grad_norm"] > 0 and steps[0]["policy/grad_norm"] == 0
