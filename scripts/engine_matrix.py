"""SFT, RM, PPO (full weights and LoRA) and DPO under DeepSpeed ZeRO-2, ZeRO-3 and FSDP2, each against DDP.

One stage on 2 processes per run, launched as `make ... ACCELERATE_CONFIG=` launches it; under ZeRO-3
and FSDP2 the run is first killed (SIGKILL) a step after its first checkpoint and then resumed, so the
comparison with DDP covers the resume too. The tests run the matrix on 2 CPU processes
(tests/test_sharded.py), `make gpu-check-engines` on 2 GPUs in bf16 (scripts/gpu_check.py).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pipeline import outputs

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "sandbox"
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate_configs"
STAGES = ("sft", "rm", "ppo", "ppo_lora", "dpo")
ENGINES = {"zero2": "DEEPSPEED ZeRO-2", "zero3": "DEEPSPEED ZeRO-3", "fsdp": "FSDP2"}
RESUMED = ("zero3", "fsdp")
# A step after the first checkpoint: 25, 15, 2, 2, 10
KILL_AT = {"sft": 30, "rm": 20, "ppo": 2, "ppo_lora": 2, "dpo": 11}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(
    args: list[str], config: str = "multi_cpu", kill_at: int | None = None, fsdp_on_cpu: bool = True
) -> subprocess.CompletedProcess:
    """`accelerate launch` on 2 processes with recipes/accelerate_configs/<config>.yaml.

    `kill_at`: every rank SIGKILLs itself in that step (tests/killed.py). `fsdp_on_cpu`: `fsdp` runs
    through tests/fsdp_on_cpu.py, as accelerate enables FSDP only on GPU-type devices.
    """
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    command += ["--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml"), "--num_processes", "2"]
    command += ["--main_process_port", str(free_port()), "-m"]
    command += ["tests.fsdp_on_cpu"] if config == "fsdp" and fsdp_on_cpu else []
    command += ["pipeline"] if kill_at is None else ["tests.killed", "step", str(kill_at)]
    return subprocess.run([*command, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600)


def stage_args(stage: str, base: Path, sft: Path, rm: Path, out: Path, *extra: str) -> list[str]:
    """A smoke recipe of `stage` for 2 processes, with the global batch of its 1-process run.

    `base` trains SFT, `sft` the RM, DPO and PPO's policy, `rm` PPO's reward and value models; `extra` are
    further `--key value` overrides.
    """
    if stage == "sft":
        recipe = ["sft", "--config", SMOKE / "sft/config_smoke.yaml", "--model_name_or_path", base]
        recipe += ["--per_device_train_batch_size", 16]
    elif stage == "rm":
        recipe = ["rm", "--config", SMOKE / "rm/config_smoke.yaml", "--model_name_or_path", sft]
        recipe += ["--per_device_train_batch_size", 12]
    elif stage == "dpo":
        recipe = ["dpo", "--config", SMOKE / "dpo/config_smoke.yaml", "--model_name_or_path", sft]
        recipe += ["--per_device_train_batch_size", 8]
    else:
        recipe = ["ppo", "--config", SMOKE / "ppo/config_smoke.yaml", "--sft_model_path", sft]
        # No clipping: DeepSpeed's engine clips the policy's and the value model's gradients as one, DDP each alone
        recipe += ["--reward_model_path", rm, "--per_device_train_batch_size", 4, "--max_grad_norm", 1000]
    if stage == "ppo_lora":
        recipe += ["--use_peft", "true", "--lora_r", 8, "--lora_alpha", 16, "--lora_target_modules", "all-linear"]
    return [*map(str, recipe), "--output_dir", str(out), *extra]


def run(args: list[str], config: str, resume: bool, kill_at: int, fsdp_on_cpu: bool = True) -> tuple[str, str]:
    """Run a stage (first killed at `kill_at`, then resumed, when `resume`): what went wrong ("" if nothing),
    and the log of the last run."""
    if resume:
        killed = launch(args, config, kill_at, fsdp_on_cpu)
        partial = outputs.partial_dir(args[args.index("--output_dir") + 1])
        if killed.returncode == 0 or outputs.last_checkpoint(partial) is None:
            return f"the run killed at step {kill_at} left no checkpoint: {killed.stderr[-2000:]}", killed.stderr
    done = launch(args, config, fsdp_on_cpu=fsdp_on_cpu)
    if done.returncode != 0:
        return done.stderr[-3000:], done.stderr
    # The Trainer's line for SFT and RM, PPO's own
    if resume and not ("resuming from the last checkpoint" in done.stderr or "resumed from" in done.stderr):
        return "the second run did not resume", done.stderr
    return "", done.stderr


def metrics(folder: Path) -> dict:
    return json.loads((folder / outputs.METRICS_FILE).read_text())


def log(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / outputs.LOG_FILE).read_text().splitlines()]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    name = "adapter_model.safetensors" if (folder / "adapter_config.json").is_file() else "model.safetensors"
    return load_file(folder / name)


def _relative(a: float, b: float) -> float:
    """|a - b| relative to b, or to 0.01 for smaller values (a KL near 0 shows rounding as a large ratio)."""
    return abs(a - b) / max(abs(b), 0.01)


def loaded_weights(stage: str, folder: Path) -> dict[str, torch.Tensor]:
    """The output loaded with plain `from_pretrained` (peft's for an adapter), as the file names its weights.

    Raises if a weight is missing, unexpected or of another shape, or if a causal LM's head came untied.
    """
    if stage == "ppo_lora":
        model = AutoPeftModelForCausalLM.from_pretrained(folder)
        return {k.replace(".default", ""): v for k, v in model.state_dict().items() if "lora_" in k}
    auto = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
    model, info = auto.from_pretrained(folder, output_loading_info=True)
    if any(info.values()):
        raise ValueError(f"{folder} loads with {info}")
    return model.state_dict()


def compare(stage: str, got: Path, ddp: Path) -> dict:
    """How far a run ended from DDP's run of the same stage: losses, the PPO log, the weights, the loaded output."""
    mine, theirs = metrics(got), metrics(ddp)
    row: dict = {"engine": mine.get("engine"), "rank_divergence": mine.get("rank_divergence")}
    row["steps"] = (mine["train_steps"], theirs["train_steps"])
    if stage in ("sft", "rm", "dpo"):
        keys = [
            k for k in ("train_loss", "eval_loss", "eval_accuracy", "eval_rewards/margins", "gold_mean") if k in theirs
        ]
        row["metrics_relative"] = max(_relative(mine[k], theirs[k]) for k in keys)
    else:
        steps, expected = log(got), log(ddp)
        row["steps"] = ([s["step"] for s in steps], [s["step"] for s in expected])
        pairs = [(a, b, k) for a, b in zip(expected, steps, strict=True) for k in (a.keys() & b.keys()) - {"seconds"}]
        # A clip fraction counts tokens past a threshold: a difference in the last digit can move one across
        row["metrics_relative"] = max(_relative(b[k], a[k]) for a, b, k in pairs if "clipfrac" not in k)
        row["clipfrac_difference"] = max(abs(b[k] - a[k]) for a, b, k in pairs if "clipfrac" in k)
    written, reference = _weights(got), _weights(ddp)
    row["missing_weights"] = sorted(set(reference) - set(written))
    row["empty_weights"] = sorted(k for k, v in written.items() if v.numel() == 0)  # ZeRO-3's pitfall, trl#4416
    # from_pretrained ties a head again whatever the file holds: a head written apart must equal the embeddings
    head, embeddings = written.get("lm_head.weight"), written.get("model.embed_tokens.weight")
    row["head_tied"] = head is None or embeddings is None or torch.equal(head, embeddings)
    shared = set(reference) & set(written) - set(row["empty_weights"])
    row["max_weight_difference"] = max(float((written[k].float() - reference[k].float()).abs().max()) for k in shared)
    loaded = loaded_weights(stage, got)
    row["loads"] = all(k in loaded and torch.equal(loaded[k].to(v.dtype), v) for k, v in written.items())
    return row
