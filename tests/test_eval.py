"""`python -m pipeline eval`: several policies on the same held-out prompts."""

import json
from statistics import mean

import pytest
from transformers import AutoModelForSequenceClassification

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.sandbox import gold_components, parse_prompt, strip_filler
from pipeline.stages.eval import parse_policies
from tests.conftest import metrics


def test_policies_are_name_dir_pairs():
    assert parse_policies(["sft=a", "ppo=b/c"]) == {"sft": "a", "ppo": "b/c"}
    for bad in (["sft"], ["=a"], ["sft=a", "sft=b"], ["rule=a"]):
        with pytest.raises(PipelineError, match="--policies"):
            parse_policies(bad)


def test_eval_compares_policies_against_the_reference_and_the_rule(runs, tmp_path):
    scorer = AutoModelForSequenceClassification.from_pretrained(runs / "sft", num_labels=1)
    scorer.save_pretrained(tmp_path / "rm")
    out = tmp_path / "eval"
    policies = [f"base={runs / 'base'}", f"sft={runs / 'sft'}"]
    args = ["eval", "--policies", *policies, "--reward_model", str(tmp_path / "rm"), "--num_prompts", "21"]
    assert main([*args, "--output_dir", str(out)]) == 0
    found = metrics(out)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    policies = found["policies"]
    assert found["reference"] == "sft" and found["names"] == ["base", "sft", "rule"] and len(samples) == 21
    assert policies["sft"]["kl_to_reference"] == 0.0 and policies["base"]["kl_to_reference"] > 0.1
    for row in samples:
        assert row["rule"] == strip_filler(row["sft"])
        assert row["gold_rule"] == pytest.approx(gold_components(row["prompt"], row["rule"], True)["gold"])
    assert policies["sft"]["gold_mean"] == pytest.approx(mean(r["gold_sft"] for r in samples))
    assert policies["sft"]["rm_score_mean"] == pytest.approx(mean(r["rm_sft"] for r in samples))
    exact = mean(float(r["sft"] in parse_prompt(r["prompt"]).answers) for r in samples)
    assert policies["sft"]["exact_match"] == pytest.approx(exact)
    gold, rm = found["gold_win_rate"], found["rm_win_rate"]
    assert gold["sft"]["base"] + gold["base"]["sft"] == pytest.approx(1.0)
    assert gold["sft"]["base"] > 0.5 and set(rm) == {"base", "sft"}
    assert "| policy | gold |" in (out / "eval.md").read_text()


def test_eval_reference_must_be_a_policy(runs, tmp_path, capsys):
    args = ["eval", "--policies", f"a={runs / 'sft'}", "--reference", "sft", "--output_dir", str(tmp_path)]
    assert main(args) == 2
    assert "--reference 'sft' is not one of the policies ['a']" in capsys.readouterr().err
