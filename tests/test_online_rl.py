"""RLOO and GRPO through TRL's trainers, with our reward model as the reward function."""

import json

import pytest
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pipeline.cli import main
from tests.conftest import SMOKE, metrics, stage_args


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_online_trainer_optimises_the_rm_and_only_logs_the_gold_judge(stage, runs, tmp_path):
    AutoModelForSequenceClassification.from_pretrained(runs / "sft", num_labels=1).save_pretrained(tmp_path / "rm")
    out = tmp_path / stage
    args = stage_args(
        stage,
        SMOKE / stage / "config_smoke.yaml",
        model_name_or_path=runs / "sft",
        reward_model_path=tmp_path / "rm",
        output_dir=out,
    )
    assert main(args) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [row for row in log if "reward" in row]
    assert len(steps) == 2
    for row in steps:
        # the reward is the RM's alone: the gold judge rides along with weight 0
        assert row["reward"] == pytest.approx(row["rewards/reward_model/mean"], abs=1e-6)
        assert "rewards/gold/mean" in row
    found = metrics(out)
    assert found["train_steps"] == 2 and found["gold_num_prompts"] == 14
    assert AutoModelForCausalLM.from_pretrained(out).config.eos_token_id is not None


def test_a_missing_reward_model_is_a_clear_error(runs, tmp_path, capsys):
    missing = tmp_path / "no_rm"
    args = stage_args(
        "rloo", SMOKE / "rloo/config_smoke.yaml", model_name_or_path=runs / "sft", reward_model_path=missing
    )
    assert main([*args, "--output_dir", str(tmp_path / "out")]) == 2
    assert f"model folder not found: {missing}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
