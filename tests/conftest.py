import os
import subprocess
from pathlib import Path

# The tests never reach a hub: a Hub id fails at once instead of after minutes of retries
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# MKL may pick its kernels by the memory alignment of a matrix, so a run in this process (whose
# allocations depend on the tests before it) and one in a fresh process could differ in the last
# bits; strict mode makes MKL's results independent of alignment for the resume tests' comparisons
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import pytest
import torch
from safetensors.torch import load_file

from pipeline.cli import main
from scripts import engine_matrix
from scripts.engine_matrix import log, metrics  # noqa: F401 (the tests' helpers)

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "sandbox"


TIMINGS = ("train_runtime", "label_seconds", "eval_seconds", "seconds", "seconds_per_step")


def flat(values: dict, prefix: str = "") -> dict:
    """A metrics.json as one level of `a/b` keys, wall times left out."""
    rows = {}
    for key, value in values.items():
        if isinstance(value, dict):
            rows.update(flat(value, f"{prefix}{key}/"))
        elif not key.endswith(TIMINGS):
            rows[prefix + key] = value
    return rows


def assert_resumed_as_uninterrupted(resumed: Path, uninterrupted: Path, weights: str = "model.safetensors") -> None:
    """A 4-update PPO run resumed from checkpoint-2 logs every step, and ends with the metrics and weights, of
    one never stopped (its first steps' lines are those the killed runs wrote)."""
    steps, reference = log(resumed), log(uninterrupted)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]
    for a, b in zip(reference, steps, strict=True):
        for key in {k for k in a if k != "seconds" and not k.startswith("time/")}:
            # abs 1e-6: a loss is a mean of terms of order 0.1 that cancel to near 0, where a resumed process's
            # summation order moved loss/policy_avg by 1.8e-7 (-0.0180662 in a fresh clone at c7b4d4c)
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (b["step"], key)
    got, want = flat(metrics(resumed)), flat(metrics(uninterrupted))
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == (pytest.approx(value, rel=1e-5, abs=1e-6) if isinstance(value, float) else value), key
    got = load_file(resumed / weights)
    for name, tensor in load_file(uninterrupted / weights).items():
        torch.testing.assert_close(got[name], tensor)


def stage_args(stage: str, recipe: Path, **overrides: object) -> list[str]:
    """Command-line arguments of a recipe stage, one `--key value` per override."""
    args = [stage, "--config", str(recipe)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """base -> SFT on the smoke recipes (about 30 s on 2 cores), shared by every stage test."""
    out = tmp_path_factory.mktemp("runs")
    assert main(stage_args("base", SMOKE / "base/config_smoke.yaml", output_dir=out / "base")) == 0
    sft = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=out / "base", output_dir=out / "sft")
    assert main(sft) == 0
    return out


@pytest.fixture(scope="session")
def models(runs):
    """The smoke SFT policy and a smoke reward model trained on it."""
    rm = runs / "rm_for_ppo"
    args = stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=rm)
    assert main(args) == 0
    return runs / "sft", rm


@pytest.fixture(scope="session")
def style_rm(runs):
    """The smoke RM recipe trained on the style comparisons (bare answer over filler), which it learns in seconds."""
    rm = runs / "rm_style"
    overrides = {"dataset_card": ROOT / "data_cards/sandbox_comparisons_style.md", "learning_rate": 3e-4}
    args = stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=rm, **overrides)
    assert main(args) == 0
    return rm


def ppo_args(models, out, **overrides):
    sft, rm = models
    recipe = SMOKE / "ppo/config_smoke.yaml"
    paths = {"sft_model_path": sft, "reward_model_path": rm, "output_dir": out}
    return stage_args("ppo", recipe, **{**paths, **overrides})


@pytest.fixture(scope="session")
def full_run(models, tmp_path_factory):
    """The smoke PPO run in one process."""
    out = tmp_path_factory.mktemp("ppo") / "full"
    assert main(ppo_args(models, out)) == 0
    return out


def check(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def two_process_args(stage: str, runs: Path, out: Path) -> list[str]:
    """A smoke stage for 2 processes (scripts/engine_matrix.py) on the session's models."""
    return engine_matrix.stage_args(stage, runs / "base", runs / "sft", runs / "rm_for_ppo", out)


@pytest.fixture(scope="session")
def ddp_runs(models, runs, tmp_path_factory):
    """Each stage of scripts/engine_matrix.py under DDP on 2 processes (multi_cpu.yaml), run when first asked for."""

    class Runs(dict):
        def __missing__(self, stage: str) -> Path:
            out = tmp_path_factory.mktemp("ddp") / stage
            check(engine_matrix.launch(two_process_args(stage, runs, out)))
            self[stage] = out
            return out

    return Runs()
