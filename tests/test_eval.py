"""`python -m pipeline eval`: several policies on the same held-out prompts."""

import json
import math
from statistics import mean

import pytest
from transformers import AutoModelForSequenceClassification

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.sandbox import gold_components, parse_prompt, strip_filler
from pipeline.sandbox.judge import FILLER_PREFIXES
from pipeline.stages.eval import parse_policies
from scripts import filler_probe
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
    assert main([*args, "--num_samples", "2", "--best_of_n", "3", "--output_dir", str(out)]) == 0
    found = metrics(out)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    policies = found["policies"]
    assert found["reference"] == "sft" and found["names"] == ["base", "sft", "rule"] and len(samples) == 21
    assert found["samples_per_prompt"] == {"base": 2, "sft": 3}
    assert policies["sft"]["kl_to_reference"]["mean"] == 0.0 and policies["base"]["kl_to_reference"]["mean"] > 0.1
    for row in samples:
        assert row["rule"] == strip_filler(row["sft"])
        assert row["gold_rule"] == pytest.approx(gold_components(row["prompt"], row["rule"], True)["gold"])
        assert row["family"] == parse_prompt(row["prompt"]).family
    assert policies["sft"]["gold_mean"] == pytest.approx(mean(r["gold_sft"] for r in samples))
    assert policies["sft"]["gold"]["mean"] == pytest.approx(policies["sft"]["gold_mean"])
    assert policies["sft"]["gold_sampled"]["mean"] == pytest.approx(mean(r["gold_sampled_sft"] for r in samples))
    assert policies["sft"]["rm_score"]["mean"] == pytest.approx(mean(r["rm_sft"] for r in samples))
    exact = mean(float(r["sft"] in parse_prompt(r["prompt"]).answers) for r in samples)
    assert policies["sft"]["exact_match"] == pytest.approx(exact)
    gold, rm = found["gold_win_rate"], found["rm_win_rate"]
    assert gold["sft"]["base"]["mean"] + gold["base"]["sft"]["mean"] == pytest.approx(1.0)
    assert gold["sft"]["base"]["mean"] > 0.5 and set(rm) == {"base", "sft"}
    difference = found["gold_difference"]["sft"]["base"]
    assert difference["mean"] == pytest.approx(policies["sft"]["gold_mean"] - policies["base"]["gold_mean"])
    assert difference["ci"][0] <= difference["mean"] <= difference["ci"][1]
    # Best-of-n of SFT's 3 samples: n = 1 is its sampled gold at KL 0, and the RM-picked gold lies below the
    # gold-picked one
    frontier = found["best_of_n"]
    assert [p["n"] for p in frontier] == [1, 2, 3] and frontier[0]["kl"] == pytest.approx(0, abs=1e-12)
    assert frontier[0]["rm_picked_gold"]["mean"] == pytest.approx(policies["sft"]["gold_sampled"]["mean"])
    assert all(p["rm_picked_gold"]["mean"] <= p["gold_picked_gold"] + 1e-9 for p in frontier)
    assert [p["kl_bound"] for p in frontier] == pytest.approx([0, math.log(2) - 1 / 2, math.log(3) - 2 / 3])
    assert all(0 <= p["kl"] <= p["kl_bound"] + 1e-9 for p in frontier)
    report = (out / "eval.md").read_text()
    assert "| policy | gold (greedy) | gold (sampled) |" in report and "## Best-of-n" in report


def test_the_filler_probe_answers_without_the_filler_openings(runs):
    # the chatty families (add, uppercase, even), where greedy SFT answers open with filler
    prompts = ["Add 40 and 5.", "Write clock in capital letters.", "Add 7 and 12.", "Write tree in capital letters."]
    found = filler_probe.probe(runs / "sft", prompts)
    openers = tuple(prefix.split()[0].strip("!,") for prefix in FILLER_PREFIXES)  # Sure, Of, Here, Great
    assert any(row["greedy"].startswith(openers) for row in found["answers"]), found["answers"]
    for row in found["answers"]:
        assert not set(row["banned_ids"]) & set(found["banned_ids"]) and not row["banned"].startswith(openers), row
    cut, greedy = found["filler cut afterwards (the rule baseline)"], found["greedy"]
    assert cut["correctness"] == greedy["correctness"] and cut["style"] >= greedy["style"]


def test_eval_refuses_sampling_at_temperature_zero(runs, tmp_path, capsys):
    args = ["eval", "--policies", f"sft={runs / 'sft'}", "--temperature", "0", "--output_dir", str(tmp_path / "e")]
    assert main(args) == 2
    assert "--temperature must be above 0" in capsys.readouterr().err
    assert main([*args, "--num_samples", "0", "--best_of_n", "0"]) == 0


def test_eval_reference_must_be_a_policy(runs, tmp_path, capsys):
    args = ["eval", "--policies", f"a={runs / 'sft'}", "--reference", "sft", "--output_dir", str(tmp_path)]
    assert main(args) == 2
    assert "--reference 'sft' is not one of the policies ['a']" in capsys.readouterr().err
