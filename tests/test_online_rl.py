"""RLOO and GRPO through TRL's trainers, with our reward model as the reward function."""

import pytest
from transformers import AutoModelForCausalLM

from pipeline.cli import main
from tests.conftest import SMOKE, log, metrics, stage_args


def test_rloo_and_grpo_raise_the_score_of_a_trained_reward_model_and_only_log_the_gold_judge(runs, style_rm, tmp_path):
    policies = [f"sft={runs / 'sft'}"]
    for stage in ("rloo", "grpo"):
        out = tmp_path / stage
        paths = {"model_name_or_path": runs / "sft", "reward_model_path": style_rm, "output_dir": out}
        recipe = SMOKE / stage / "config_smoke.yaml"
        assert main(stage_args(stage, recipe, **paths, max_steps=16, learning_rate=5e-4)) == 0
        steps = [row for row in log(out) if "reward" in row]
        assert len(steps) == 16
        for row in steps:
            # the reward is the RM's alone: the gold judge rides along with weight 0
            assert row["reward"] == pytest.approx(row["rewards/reward_model/mean"], abs=1e-6)
            assert "rewards/gold/mean" in row
        found = metrics(out)
        assert found["train_steps"] == 16 and found["gold_num_prompts"] == 14
        assert AutoModelForCausalLM.from_pretrained(out).config.eos_token_id is not None
        policies.append(f"{stage}={out}")
    evaluation = ["eval", "--reward_model", str(style_rm), "--output_dir", str(tmp_path / "eval"), "--policies"]
    assert main([*evaluation, *policies, "--num_prompts", "70", "--num_samples", "1", "--max_new_tokens", "32"]) == 0
    wins = metrics(tmp_path / "eval")["rm_win_rate"]
    # The RM (bare answers over filler) prefers their greedy answers to SFT's on most of 70 held-out prompts:
    # 0.67 [0.56, 0.77] and 0.64 [0.53, 0.76] at seed 0, and RLOO's trained on the RM's score negated on 0.14.
    # The smoke SFT's greedy answers carry little filler (style 0.95): the margin is the mean's, not the interval's
    for stage in ("rloo", "grpo"):
        assert wins[stage]["sft"]["mean"] > 0.5, wins[stage]["sft"]


def test_a_missing_reward_model_is_a_clear_error(runs, tmp_path, capsys):
    missing = tmp_path / "no_rm"
    args = stage_args(
        "rloo", SMOKE / "rloo/config_smoke.yaml", model_name_or_path=runs / "sft", reward_model_path=missing
    )
    assert main([*args, "--output_dir", str(tmp_path / "out")]) == 2
    assert f"model folder not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
