"""`make bench` (scripts/bench): the quick harness on the smoke models, and the settings both PPO trainers get."""

import json
import math

import pytest

from scripts.bench import settings
from scripts.bench.__main__ import main, ratios
from scripts.bench.table import ROWS

pytestmark = pytest.mark.slow  # a quick bench: several fresh processes

KEYS = (
    "sft_time_ratio_vs_trl",
    "rm_time_ratio_vs_trl",
    "ppo_speedup_vs_trl112",
    "ppo_rss_ratio_vs_trl112",
    "ppo_lora_speedup_vs_trl112",
    "ppo_gold_gain",
    "ppo_gold_gain_trl112",
    "rollout_ratio_vs_generate",
)


@pytest.mark.parametrize("size", [settings.FULL, settings.QUICK], ids=["full", "quick"])
def test_both_ppo_trainers_roll_out_the_same_episodes_in_the_same_mini_batches(size):
    ours, theirs = settings.batch_keys(size.ppo, trl112=False), settings.batch_keys(size.ppo, trl112=True)
    # Ours: num_mini_batches mini-batches of per_device x accumulation; TRL 1.12: per_device x accumulation, cut
    ours_rollout = ours["per_device_train_batch_size"] * ours["num_mini_batches"]
    theirs_rollout = theirs["per_device_train_batch_size"]
    assert ours_rollout == theirs_rollout == size.ppo["batch_size"]
    assert ours["per_device_train_batch_size"] == theirs_rollout // theirs["num_mini_batches"]
    assert {k: v for k, v in ours.items() if k != "per_device_train_batch_size"} == {
        k: v for k, v in theirs.items() if k != "per_device_train_batch_size"
    }


def test_ratios_are_taken_within_each_pair():
    runs = [({"x": 2.0}, {"x": 1.0}), ({"x": 3.0}, {"x": 6.0})]
    assert ratios(runs, "x") == [2.0, 0.5]
    assert ratios(runs, "x", invert=True) == [0.5, 2.0]


def test_a_missing_model_is_named_and_nothing_is_written(tmp_path, capsys):
    assert main(["--quick", "--base", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "bench")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--base {tmp_path / 'nowhere'} is no model folder" in error
    assert not (tmp_path / "bench").exists()


def test_quick_bench_writes_every_key_finite_with_its_pairs(runs, models, tmp_path):
    sft, rm = models
    out = tmp_path / "bench"
    argv = ["--quick", "--base", str(runs / "base"), "--sft", str(sft), "--rm", str(rm), "--output_dir", str(out)]
    assert main(argv) == 0
    bench = json.loads((out / "bench.json").read_text())
    assert "ppo_smollm2" not in bench["runs"]  # the quick mode leaves SmolLM2 out
    for key in KEYS + tuple(row[1] for row in ROWS if row[2] in bench["runs"]):
        assert math.isfinite(bench[key]), key
        assert len(bench[f"{key}_pairs"]) == 1 and bench[key] == bench[f"{key}_pairs"][0], key
    for mode in ("ppo", "ppo_lora"):
        for ours, theirs in bench["runs"][mode]:
            for figures in (ours, theirs):
                assert figures["rollout_seconds_per_update"] > 0 and figures["scoring_seconds_per_update"] > 0
    table = (out / "bench.md").read_text()
    assert all(row[0] in table for row in ROWS if row[2] in bench["runs"]) and "| sandbox | LoRA | TRL 1.12 |" in table
    assert sorted(p.name for p in out.iterdir()) == ["bench.json", "bench.md", "logs", "trl112"]
