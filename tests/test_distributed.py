"""Every trainer stage under `accelerate launch` with 2 CPU processes (recipes/accelerate_configs/multi_cpu.yaml).

The checks: the ranks end with identical parameters, the global batch is per-device x accumulation x
processes, SFT's loss equals a 1-process run with the same global batch, and PPO whitens over both
ranks, writes once and resumes under 2 processes as an uninterrupted run.
"""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from accelerate import PartialState
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    TrainingArguments,
)

from pipeline.cli import main
from pipeline.distributed import end_ranks, fill_deepspeed_config, require_engine, scalar, use_recipe_precision
from pipeline.errors import PipelineError
from pipeline.ppo.core import masked_whiten
from pipeline.ppo.trainer import PolicyAndValue
from pipeline.sampling import sample
from scripts.engine_matrix import ACCELERATE_CONFIGS, ROOT, free_port, launch
from tests.conftest import (
    SMOKE,
    assert_resumed_as_uninterrupted,
    check,
    log,
    metrics,
    stage_args,
    two_process_args,
)
from tests.test_sampling import CONFIG as TINY_LLAMA

pytestmark = pytest.mark.slow  # 2 processes under accelerate launch

MULTI_CPU = ACCELERATE_CONFIGS / "multi_cpu.yaml"


def _whiten_half(rank: int, folder: str, values: torch.Tensor, mask: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/init", rank=rank, world_size=2)

    def all_reduce(tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    rows = slice(rank * 3, rank * 3 + 3)
    torch.save(masked_whiten(values[rows], mask[rows], reduce=all_reduce), f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


def test_whitening_over_two_ranks_equals_whitening_their_joined_batch(tmp_path):
    values = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 2 + [[1, 1, 1, 1, 1]] * 2 + [[1, 0, 0, 0, 0]] * 2).float()
    mp.spawn(_whiten_half, args=(str(tmp_path), values, mask), nprocs=2)
    halves = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    torch.testing.assert_close(torch.cat(halves), masked_whiten(values, mask))
    alone = masked_whiten(values[:3], mask[:3])
    assert not torch.allclose(halves[0], alone)  # a rank's own statistics would differ


class StopsAfter(torch.nn.Module):
    """A fake causal LM that says token 5 until its `steps`-th call, then the stop token 2; it counts calls."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps, self.calls = steps, 0

    def forward(self, input_ids, **_):
        self.calls += 1
        logits = torch.zeros(len(input_ids), input_ids.shape[1], 8)
        logits[:, -1, 2 if self.calls >= self.steps else 5] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=None)


def _sample_in_step(rank: int, folder: str, synced: bool) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", ACCELERATE_USE_CPU="true")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=Path(folder, "port").read_text())
    PartialState(cpu=True)
    model = StopsAfter(steps=1 if rank == 0 else 5)
    queries, mask = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    samples = sample(model, queries, mask, 10, 0.0, stop_token_id=2, pad_token_id=0, synced=synced)
    torch.save({"calls": model.calls, "mask": samples.mask}, f"{folder}/rank{rank}.pt")
    end_ranks()


@pytest.mark.parametrize("synced", [True, False])
def test_synced_sampling_keeps_every_rank_in_step_until_all_are_done(tmp_path, synced):
    (tmp_path / "port").write_text(str(free_port()))
    mp.spawn(_sample_in_step, args=(str(tmp_path), synced), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    # Sharded weights need the same forward passes on every rank; the early rank's responses stay one token
    assert [r["calls"] for r in ranks] == ([5, 5] if synced else [1, 5])
    assert ranks[0]["mask"].sum(1).tolist() == [1, 1] and ranks[1]["mask"].sum(1).tolist() == [5, 5]


def test_accelerate_configs_load_and_say_what_they_shard():
    configs = {path.stem: load_config_from_file(str(path)) for path in MULTI_CPU.parent.glob("*.yaml")}
    assert set(configs) == {"multi_cpu", "ddp", "zero2", "zero3", "fsdp"}
    assert configs["multi_cpu"].num_processes == 2 and configs["multi_cpu"].use_cpu
    assert configs["ddp"].distributed_type == "MULTI_GPU"
    assert configs["zero2"].deepspeed_config["zero_stage"] == 2
    # PPO saves a ZeRO-3 policy through one gathered 16-bit state dict, and FSDP through a full one
    assert configs["zero3"].deepspeed_config["zero_stage"] == 3
    assert configs["zero3"].deepspeed_config["zero3_save_16bit_model"]
    assert configs["fsdp"].fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_sft_on_two_processes_matches_one_process_with_the_same_global_batch(runs, ddp_runs):
    out = ddp_runs["sft"]
    two, one = metrics(out), metrics(runs / "sft")  # the session's 1-process run: 32 per device
    assert (two["num_processes"], two["effective_batch_size"], one["effective_batch_size"]) == (2, 32, 32)
    assert two["rank_divergence"] == 0.0
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=0.01)  # the eval split is sharded
    assert not out.with_name("sft.partial").exists() and (out / "model.safetensors").is_file()
    assert two["engine"] == "MULTI_CPU"


def launch_on_two_machines(args: list[str], config: str = "multi_cpu") -> list[subprocess.CompletedProcess]:
    """`accelerate launch` as on two machines of one process each, both on this host: machine 0 is the main one."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        ACCELERATE_CONFIGS / f"{config}.yaml",
    ]
    command += ["--num_machines", 2, "--num_processes", 2, "--main_process_ip", "127.0.0.1"]
    command += ["--main_process_port", free_port()]
    machines = [
        subprocess.Popen(
            [*map(str, command), "--machine_rank", str(rank), "-m", "pipeline", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    found = []
    for machine in machines:
        out, err = machine.communicate(timeout=600)
        found.append(subprocess.CompletedProcess(machine.args, machine.returncode, out, err))
    return found


def test_sft_on_two_machines_matches_one_machine_with_two_processes(runs, ddp_runs, tmp_path):
    out = tmp_path / "sft"
    for machine in launch_on_two_machines(two_process_args("sft", runs, out)):
        check(machine)
    two_machines, one_machine = metrics(out), metrics(ddp_runs["sft"])
    assert (two_machines["num_machines"], one_machine["num_machines"]) == (2, 1)
    assert two_machines["num_processes"] == one_machine["num_processes"] == 2
    assert two_machines["rank_divergence"] == 0.0
    assert two_machines["train_loss"] == pytest.approx(one_machine["train_loss"], rel=1e-6)
    assert two_machines["eval_loss"] == pytest.approx(one_machine["eval_loss"], rel=1e-6)


def test_rm_on_two_processes_keeps_ranks_in_step(runs, ddp_runs, tmp_path):
    one = tmp_path / "one"
    assert main(stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=one)) == 0
    a, b = metrics(one), metrics(ddp_runs["rm"])
    assert (b["num_processes"], b["effective_batch_size"], a["effective_batch_size"]) == (2, 24, 24)
    assert b["rank_divergence"] == 0.0
    # Ranked lists pack into different batches at 12 and 24 pairs per device, so the runs differ a little
    assert b["train_loss"] == pytest.approx(a["train_loss"], abs=0.01)
    assert b["eval_pairs"] == a["eval_pairs"]


@pytest.fixture(scope="module")
def ppo_two_processes(ddp_runs):
    return ddp_runs["ppo"]


def test_ppo_on_two_processes_splits_the_rollout_and_writes_once(ppo_two_processes, full_run):
    got, alone = metrics(ppo_two_processes), metrics(full_run)  # the same global batch in one process
    assert (got["num_processes"], got["episodes"], got["train_steps"]) == (2, 64, 4)
    assert got["rank_divergence"] == 0.0
    # The held-out evaluation is split over the ranks: the SFT side must come out as in one process
    assert got["ptx_loss_sft"] == pytest.approx(alone["ptx_loss_sft"], rel=1e-5)
    for name in ("sft", "rule"):
        for key in ("gold_mean", "gold_correctness") + (("rm_score",) if name == "sft" else ()):
            value, expected = got["eval"]["policies"][name][key], alone["eval"]["policies"][name][key]
            value, expected = (value["mean"], expected["mean"]) if key == "rm_score" else (value, expected)
            assert value == pytest.approx(expected, rel=1e-5), (name, key)
    assert got["trained_family_mix"] == alone["trained_family_mix"]
    prompts = got["eval"]["prompts"]
    assert prompts == alone["eval"]["prompts"]
    assert len((ppo_two_processes / "ppo_samples.jsonl").read_text().splitlines()) == prompts
    assert [s["step"] for s in log(ppo_two_processes)] == [1, 2, 3, 4]  # one line per update: main process only
    assert all(s["episode"] == 16 * s["step"] for s in log(ppo_two_processes))
    # The learning-rate schedule counts optimiser steps, not optimiser steps x processes
    assert [s["lr"] for s in log(ppo_two_processes)] == pytest.approx([s["lr"] for s in log(full_run)], abs=1e-12)


def test_ppo_resumes_under_two_processes_as_if_never_stopped(runs, ppo_two_processes, tmp_path, capsys):
    out = tmp_path / "resumed"
    args = two_process_args("ppo", runs, out)
    assert launch(args, kill_at=2).returncode != 0
    partial = tmp_path / "resumed.partial"
    assert (partial / "checkpoint-2").is_dir() and [s["step"] for s in log(partial)] == [1, 2]

    assert main(args) == 2  # one process cannot continue a 2-process run
    assert "written by 2 process(es) and this run has 1" in capsys.readouterr().err

    check(launch(args))
    assert_resumed_as_uninterrupted(out, ppo_two_processes)


def test_a_config_whose_engine_did_not_start_stops_the_run(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    fell_back = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)
    with pytest.raises(PipelineError, match="asks for DEEPSPEED but accelerate set up MULTI_CPU"):
        require_engine(fell_back)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    require_engine(fell_back)  # asked for nothing: data parallelism is what was asked


def test_the_recipe_sets_the_mixed_precision_over_the_launcher(monkeypatch, tmp_path):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # what a launcher with zero3.yaml passes on
    configs = (TrainingArguments(output_dir=str(tmp_path), bf16=False),)
    assert configs[0].mixed_precision == "bf16"  # transformers took the launcher's
    assert use_recipe_precision(configs)
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "no"
    assert TrainingArguments(output_dir=str(tmp_path), bf16=False).mixed_precision == "no"
    assert not use_recipe_precision(configs)  # built again: nothing left to change


def test_deepspeed_auto_values_come_from_the_ppo_recipe():
    config = {"train_micro_batch_size_per_gpu": "auto", "gradient_clipping": "auto"}
    state = SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config))
    accelerator = SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=state)
    fill_deepspeed_config(accelerator, 4, 0.5)
    assert config == {"train_micro_batch_size_per_gpu": 4, "gradient_clipping": 0.5}  # not accelerate's 1.0
    config["gradient_clipping"] = 2.0  # set in the user's DeepSpeed config: kept
    fill_deepspeed_config(accelerator, 4, 0.5)
    assert config["gradient_clipping"] == 2.0


def test_engine_numbers_become_plain_tensors_for_the_finite_check():
    assert torch.isnan(scalar(float("nan"), torch.device("cpu")))  # DeepSpeed's gradient norm is a float
    assert scalar(torch.tensor(2.0, dtype=torch.float64), torch.device("cpu")).dtype == torch.float32


def test_policy_and_value_ties_the_lm_head_again_after_a_load_moved_it_apart():
    config = LlamaConfig(**TINY_LLAMA, tie_word_embeddings=True)
    policy, value = AutoModelForCausalLM.from_config(config), AutoModelForSequenceClassification.from_config(config)
    policy.lm_head.weight = torch.nn.Parameter(policy.lm_head.weight.detach().clone())  # what FSDP2's loading does
    both = PolicyAndValue(policy, value)
    both.tie_weights()  # accelerate's fsdp2_prepare_model calls the root's tie_weights
    assert policy.lm_head.weight is policy.get_input_embeddings().weight
