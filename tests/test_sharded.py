"""SFT, RM and PPO (full weights and LoRA) under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2, and DPO under ZeRO-3, on 2
CPU processes.

Each run is compared with the DDP run of the same stage (`ddp_runs`, multi_cpu.yaml) through
scripts/engine_matrix.py, which `make gpu-check-engines` runs on GPUs too. Under ZeRO-3 and FSDP2 the run is
killed after its first checkpoint and resumed. DeepSpeed runs on its CPU accelerator over gloo; FSDP2
through tests/fsdp_on_cpu.py. Measured here (docs/results.md): weights within 1.4e-5 of DDP's (RM under
ZeRO-3, which reduces in another order; the others within 5e-7), SFT and RM metrics within 6e-8 and
PPO's logged statistics within 3.3e-5 relative.
"""

import pytest

from pipeline import outputs
from scripts.engine_matrix import ENGINES, KILL_AT, RESUMED, STAGES, compare, launch, run
from tests.conftest import two_process_args

pytestmark = pytest.mark.slow


# DPO under ZeRO-3 only, killed and resumed (the suite's time); under ZeRO-2 and FSDP2 it passed the same test
# by hand (docs/scaling.md), and `make gpu-check-engines` runs all three
CASES = [(stage, engine) for stage in STAGES for engine in ENGINES if stage != "dpo" or engine == "zero3"]


@pytest.mark.parametrize(("stage", "engine"), CASES)
def test_stage_under_engine_matches_ddp(stage, engine, runs, ddp_runs, tmp_path):
    out = tmp_path / stage
    failed, log = run(two_process_args(stage, runs, out), engine, engine in RESUMED, KILL_AT[stage])
    assert failed == ""
    if engine == "fsdp" and stage.startswith("ppo"):
        assert (
            "FSDP2: 5 units (a root and one per decoder layer)" in log
        )  # 2 layers each in the smoke policy and value model
    row = compare(stage, out, ddp_runs[stage])
    assert row["engine"] == ENGINES[engine]  # the config's engine ran, not a fallback to DDP
    # Sharded weights are one copy between the ranks: no divergence to measure (ZeRO-3 reported 0.0)
    assert row["rank_divergence"] == (0.0 if engine == "zero2" else None)
    assert row["steps"][0] == row["steps"][1]
    assert row["metrics_relative"] <= 1e-4
    assert row.get("clipfrac_difference", 0.0) <= 0.01  # a few tokens of the rollout's 400
    assert row["missing_weights"] == row["empty_weights"] == []
    assert row["max_weight_difference"] <= 5e-5
    assert row["loads"] and row["head_tied"]


def test_fsdp_without_a_gpu_stops_with_one_line_instead_of_running_ddp(runs, tmp_path):
    out = tmp_path / "sft"
    result = launch(two_process_args("sft", runs, out), "fsdp", fsdp_on_cpu=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines and "asks for FSDP, which accelerate 1.15.0 runs only on GPUs" in lines[0]
    assert "zero3.yaml" in lines[0]
    assert not out.exists() and not outputs.partial_dir(out).exists()
