"""SIGKILL in every stage, then the same command again: it completes as the run that was never stopped.

Each trainer stage is killed twice: inside an optimiser step after its first checkpoint, then (resumed)
inside the writing of its next checkpoint, so the resume must pass over a half-written folder. The
third run completes; its metrics and weights equal an uninterrupted run's with the same seed, exactly
up to float summation order (tests/killed.py holds the kill points). Stages without checkpoints
(label, eval) are killed just before their output is complete and start again from nothing.
"""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pipeline import chain
from pipeline.cli import main
from tests.conftest import (
    ROOT,
    SMOKE,
    assert_resumed_as_uninterrupted,
    flat,
    log,
    metrics,
    ppo_args,
    stage_args,
)

pytestmark = pytest.mark.slow  # kill points: every stage killed and resumed

# bf16 as on a CPU that computes it: frozen weights in bf16, adapters and optimiser state in fp32
LORA_BF16 = {"bf16": "true", "use_cpu": "true", "use_peft": "true", "lora_r": 8, "lora_alpha": 16}


def killed(where: str, step: int, args: list[str]) -> None:
    """Run a stage that SIGKILLs itself at `where` `step` (tests/killed.py)."""
    command = [sys.executable, "-m", "tests.killed", where, str(step), *map(str, args)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]


def assert_same_outputs(resumed: Path, uninterrupted: Path, weights: str = "model.safetensors") -> None:
    """Equal metrics (timings aside; floats to 1e-6, the order of a loss sum may change) and equal weights."""
    got, want = flat(metrics(resumed)), flat(metrics(uninterrupted))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, rel=1e-6, abs=1e-9) if isinstance(value, float) else value), key
    got = load_file(resumed / weights)
    for name, tensor in load_file(uninterrupted / weights).items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0)


def resume(args: list[str], caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    return caplog.text


def kill_twice_and_finish(args: list[str], in_step: int, in_checkpoint: int, caplog) -> str:
    """Kill inside a step, then inside a checkpoint write, then finish; the last run's log."""
    killed("step", in_step, args)
    killed("checkpoint", in_checkpoint, args)
    return resume(args, caplog)


def test_base_resumes_to_the_uninterrupted_model(runs, tmp_path, caplog):
    out = tmp_path / "base"
    # checkpoints at steps 40 and 80 of 80: killed in step 51, then while checkpoint-80 is written
    text = kill_twice_and_finish(stage_args("base", SMOKE / "base/config_smoke.yaml", output_dir=out), 50, 80, caplog)
    assert "checkpoint-80: a checkpoint whose writing was interrupted" in text
    assert "resuming from the last checkpoint" in text
    assert_same_outputs(out, runs / "base")
    assert (out / "tokenizer.json").read_text() == (runs / "base" / "tokenizer.json").read_text()


def test_sft_resumes_to_the_uninterrupted_model(runs, tmp_path, caplog):
    out = tmp_path / "sft"
    args = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=runs / "base", output_dir=out)
    kill_twice_and_finish(args, 30, 50, caplog)
    assert_same_outputs(out, runs / "sft")
    assert not out.with_name("sft.partial").exists()


def test_lora_sft_in_bf16_resumes_to_the_uninterrupted_model(runs, tmp_path, caplog):
    recipe, bf16 = SMOKE / "sft/config_smoke.yaml", {**LORA_BF16, "model_name_or_path": runs / "base"}
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert main(stage_args("sft", recipe, output_dir=uninterrupted, **bf16)) == 0
    text = kill_twice_and_finish(stage_args("sft", recipe, output_dir=out, **bf16), 30, 50, caplog)
    assert "resuming from the last checkpoint" in text
    assert_same_outputs(out, uninterrupted, weights="adapter_model.safetensors")
    assert yaml.safe_load((out / "recipe.yaml").read_text())["bf16"] is True


def test_rm_resumes_to_the_uninterrupted_model(models, tmp_path, caplog):
    out = tmp_path / "rm"
    args = stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=models[0], output_dir=out)
    kill_twice_and_finish(args, 20, 30, caplog)
    assert_same_outputs(out, models[1])


def test_rm_killed_in_its_second_epoch_resumes_to_the_uninterrupted_model(models, tmp_path, caplog):
    """Each epoch draws its own batch order: a run resumed in epoch 2 must draw epoch 2's, not epoch 1's."""
    recipe, common = SMOKE / "rm/config_smoke.yaml", {"model_name_or_path": models[0], "max_train_samples": 40}
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert main(stage_args("rm", recipe, output_dir=uninterrupted, **common)) == 0
    # 40 ranked lists pack into 9 batches of whole lists: checkpoint-15 is in epoch 2 of 3+
    epochs = {row["step"]: row["epoch"] for row in log(uninterrupted) if "loss" in row}
    steps_per_epoch = 20 / epochs[20]
    assert 1 < 15 / steps_per_epoch < 2 < 30 / steps_per_epoch
    # killed in step 18, after checkpoint-15 (a kill inside a checkpoint's writing is the test above's)
    args = stage_args("rm", recipe, output_dir=out, **common)
    killed("step", 17, args)
    assert "resuming from the last checkpoint" in resume(args, caplog)
    assert_same_outputs(out, uninterrupted)
    steps, reference = ([row for row in log(run) if "loss" in row] for run in (out, uninterrupted))
    assert [row["step"] for row in steps] == [row["step"] for row in reference]
    for got, want in zip(steps, reference, strict=True):
        # TRL's RewardTrainer counts num_tokens in memory: a resumed process counts from its own start
        del got["num_tokens"], want["num_tokens"]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), got["step"]


@pytest.mark.parametrize("stage", ["rloo", "grpo"])
def test_online_rl_resumes_to_the_uninterrupted_model(stage, models, tmp_path, caplog):
    paths = {"model_name_or_path": models[0], "reward_model_path": models[1], "save_steps": 1}
    recipe = SMOKE / stage / "config_smoke.yaml"
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert main(stage_args(stage, recipe, output_dir=uninterrupted, **paths)) == 0
    kill_twice_and_finish(stage_args(stage, recipe, output_dir=out, **paths), 1, 2, caplog)
    assert_same_outputs(out, uninterrupted)


def test_ppo_resumes_to_the_uninterrupted_run(models, full_run, tmp_path, caplog):
    out = tmp_path / "ppo"
    args = ppo_args(models, out, save_steps=1)
    # killed in update 3 (checkpoint-2 complete), then while checkpoint-3 is written
    text = kill_twice_and_finish(args, 2, 3, caplog)
    assert "tmp-checkpoint-3: a checkpoint whose writing was interrupted" in text
    assert "resumed from" in text and "checkpoint-2 (step 2 of 4)" in text
    assert_resumed_as_uninterrupted(out, full_run)


def test_lora_ppo_in_bf16_resumes_to_the_uninterrupted_run(models, tmp_path, caplog):
    bf16 = {**LORA_BF16, "save_steps": 1}
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "resumed"
    assert main(ppo_args(models, uninterrupted, **bf16)) == 0
    text = kill_twice_and_finish(ppo_args(models, out, **bf16), 2, 3, caplog)
    assert "resumed from" in text and "checkpoint-2 (step 2 of 4)" in text
    assert_resumed_as_uninterrupted(out, uninterrupted, weights="adapter_model.safetensors")
    assert yaml.safe_load((out / "recipe.yaml").read_text())["bf16"] is True


def test_label_killed_before_its_output_is_complete_starts_again(runs, tmp_path, caplog):
    recipe = SMOKE / "label/config_smoke.yaml"
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "comparisons"
    assert main(stage_args("label", recipe, model_name_or_path=runs / "sft", output_dir=uninterrupted)) == 0
    args = stage_args("label", recipe, model_name_or_path=runs / "sft", output_dir=out)
    killed("finish", 0, args)
    left = out.with_name("comparisons.partial")
    assert (left / "train.jsonl").is_file() and not out.exists()  # what it left is not taken for output
    assert "holds an unfinished run (no complete checkpoint): starting again from nothing" in resume(args, caplog)
    for name in ("train.jsonl", "test.jsonl"):
        assert (out / name).read_text() == (uninterrupted / name).read_text()
    assert flat(metrics(out)) == flat(metrics(uninterrupted))


def test_eval_killed_before_its_output_is_complete_starts_again(runs, tmp_path, caplog):
    base = ["eval", "--policies", f"base={runs / 'base'}", f"sft={runs / 'sft'}", "--num_prompts", "14"]
    uninterrupted, out = tmp_path / "uninterrupted", tmp_path / "eval"
    assert main([*base, "--output_dir", str(uninterrupted)]) == 0
    killed("finish", 0, [*base, "--output_dir", out])
    assert not out.exists()
    assert "starting again from nothing" in resume([*base, "--output_dir", str(out)], caplog)
    assert flat(metrics(out)) == flat(metrics(uninterrupted))


def test_the_chain_skips_finished_stages_and_resumes_the_killed_one(runs, tmp_path, caplog):
    base, sft = tmp_path / "base", tmp_path / "sft"
    steps = [
        chain.Step("base", tuple(stage_args("base", SMOKE / "base/config_smoke.yaml", output_dir=base)), base),
        chain.Step(
            "sft",
            tuple(stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=base, output_dir=sft)),
            sft,
            (base,),
        ),
    ]
    plan = tmp_path / "chain.json"
    plan.write_text(json.dumps([[s.name, s.argv, str(s.output), [str(i) for i in s.inputs]] for s in steps]))
    chain.run(steps[:1], main)
    killed("step", 30, ["chain", plan])  # base skipped, SFT dies in step 31
    assert not sft.exists()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        rows = chain.run(steps, main)
    assert [row["ran"] for row in rows] == [False, True]
    assert "resuming from the last checkpoint" in caplog.text
    assert_same_outputs(sft, runs / "sft")
