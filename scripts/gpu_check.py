"""The prepared GPU check: SFT then PPO on a randomly initialised Qwen2.5-0.5B-shaped model in bf16.

`make gpu-check` (`python -m scripts.gpu_check`) on a machine with one CUDA GPU; it is sized to take
under 8 minutes. It runs the real stages in this process and reports, per stage, the wall time, the
throughput and the peak GPU memory (PPO a second time with vLLM rollouts, where `make setup-vllm` installed
it), then trains QLoRA (4-bit NF4 through bitsandbytes) for a few
SFT steps, and writes everything to `<output_dir>/gpu_check.json`. `--tiny` runs the same steps with
a tiny model on the CPU, which is how the tests keep this script working on machines without a GPU.

`--engines` (`make gpu-check-engines`) on a machine with 2 or more GPUs runs instead the matrix that
the tests run on 2 CPU processes (scripts/engine_matrix.py): SFT, RM, PPO and PPO-LoRA on the smoke
recipes under DDP, ZeRO-2, ZeRO-3 and FSDP2 in bf16, killed and resumed under ZeRO-3 and FSDP2, each
compared with DDP; it is sized to take under 10 minutes and writes `<output_dir>/engines.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from pipeline.cli import main as pipeline
from pipeline.data import load_card
from pipeline.errors import PipelineError
from pipeline.sandbox.tokenizer import train_tokenizer
from pipeline.vllm_engine import check_engine
from scripts import engine_matrix
from scripts.reward_head import untrained_reward_model

ROOT = Path(__file__).resolve().parents[1]
SANDBOX = ROOT / "recipes" / "sandbox"
# Qwen2.5-0.5B's shape (its config.json on the Hub); the vocabulary is the sandbox tokenizer's
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1_000_000.0,
    tie_word_embeddings=True,
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build_base(output_dir: Path, tiny: bool) -> int:
    """A random Qwen2 model in bf16 with the sandbox tokenizer, saved as a Hub model would be; its size."""
    texts, _ = load_card(ROOT / "data_cards" / "sandbox_pretrain.md", "train", max_rows=4000)
    tokenizer = train_tokenizer(texts["text"], min_count=10)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **(TINY if tiny else QWEN25_05B),
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return sum(p.numel() for p in model.parameters())


def stage(name: str, argv: list[str], results: dict, output_dir: Path) -> dict:
    """Run one pipeline stage here, timing it and taking the GPU's peak memory; its metrics.json."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    status = pipeline(argv)
    seconds = time.monotonic() - started
    if status != 0:
        raise SystemExit(f"gpu check: the {name} stage exited with {status}")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    results[name] = {
        "seconds": round(seconds, 1),
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if torch.cuda.is_available()
        else None,
    }
    return metrics


def engines(out: Path) -> dict:
    """Every stage under each engine on 2 GPUs in bf16, against DDP: engine_matrix's rows, by stage and engine."""
    base, sft, rm = out / "base", out / "sft", out / "rm"
    smoke = engine_matrix.SMOKE
    for name, argv in (
        ("base", ["base", "--config", smoke / "base/config_smoke.yaml", "--output_dir", base]),
        (
            "sft",
            ["sft", "--config", smoke / "sft/config_smoke.yaml", "--model_name_or_path", base, "--output_dir", sft],
        ),
        ("rm", ["rm", "--config", smoke / "rm/config_smoke.yaml", "--model_name_or_path", sft, "--output_dir", rm]),
    ):
        if pipeline([*map(str, argv), "--bf16", "true"]) != 0:
            raise SystemExit(f"gpu check: the smoke {name} stage failed")
    rows: dict = {}
    for stage in engine_matrix.STAGES:
        args = {
            engine: engine_matrix.stage_args(stage, base, sft, rm, out / engine / stage, "--bf16", "true")
            for engine in ("ddp", *engine_matrix.ENGINES)
        }
        started = time.monotonic()
        failed, _ = engine_matrix.run(args["ddp"], "ddp", False, 0, fsdp_on_cpu=False)
        rows[stage] = {"ddp": {"seconds": round(time.monotonic() - started, 1), "failed": failed}}
        for engine in engine_matrix.ENGINES:
            started = time.monotonic()
            resume = engine in engine_matrix.RESUMED
            failed, _ = engine_matrix.run(args[engine], engine, resume, engine_matrix.KILL_AT[stage], fsdp_on_cpu=False)
            row = {"seconds": round(time.monotonic() - started, 1), "resumed": resume, "failed": failed}
            if not failed and not rows[stage]["ddp"]["failed"]:
                row.update(engine_matrix.compare(stage, out / engine / stage, out / "ddp" / stage))
            rows[stage][engine] = row
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m scripts.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="outputs/gpu_check")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU: checks this script, not a GPU")
    parser.add_argument("--engines", action="store_true", help="DDP, ZeRO-2, ZeRO-3 and FSDP2 on 2 GPUs instead")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    if args.engines:
        if torch.cuda.device_count() < 2:
            raise SystemExit(f"gpu check: --engines needs 2 CUDA GPUs, and {torch.cuda.device_count()} are visible")
        results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "engines": engines(out)}
        (out / "engines.json").write_text(json.dumps(results, indent=2) + "\n")
        json.dump(results, sys.stdout, indent=2)
        print()
        return results
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit(
            "gpu check: no CUDA GPU is visible (torch.cuda.is_available() is False); --tiny runs on the CPU"
        )
    steps = {"sft": 8, "ppo_episodes": 64, "qlora": 4} if args.tiny else {"sft": 60, "ppo_episodes": 512, "qlora": 20}
    results: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "parameters": build_base(out / "base", args.tiny),
    }
    cpu = ["--use_cpu", "true"] if args.tiny else []

    # Stage 1: full SFT in bf16 (weights and compute), the demo's data
    sft_dir = out / "sft"
    sft = [*("sft", "--config", str(SANDBOX / "sft/config_demo.yaml")), "--model_name_or_path", str(out / "base")]
    sft += ["--output_dir", str(sft_dir), "--dtype", "bfloat16", "--bf16", "true", "--max_steps", str(steps["sft"])]
    sft += ["--sandbox_eval_prompts", "0", "--save_strategy", "no", "--logging_steps", "10", *cpu]
    metrics = stage("sft", sft, results, sft_dir)
    results["sft"].update(
        train_loss=metrics["train_loss"],
        sequences_per_second=round(steps["sft"] * metrics["effective_batch_size"] / metrics["train_runtime"], 1),
    )

    # Stage 2: LoRA PPO on the SFT policy; the SFT weights with a fresh score head stand in for the RM
    ppo_dir = out / "ppo"
    ppo = [*("ppo", "--config", str(SANDBOX / "ppo/config_lora.yaml")), "--sft_model_path", str(sft_dir)]
    rm_dir = untrained_reward_model(sft_dir, out / "rm")  # throughput only: the SFT weights with a new head
    ppo += ["--reward_model_path", str(rm_dir), "--normalize_reward", "false", "--output_dir", str(ppo_dir)]
    ppo += ["--dtype", "bfloat16", "--bf16", "true", "--total_episodes", str(steps["ppo_episodes"])]
    ppo += ["--sandbox_eval_prompts", "64", "--save_steps", "4", *cpu]
    metrics = stage("ppo", ppo, results, ppo_dir)
    results["ppo"].update(
        seconds_per_update=metrics["seconds_per_step"],
        episodes_per_second=round(metrics["episodes"] / metrics["train_runtime"], 1),
        kl_to_sft=metrics["eval"]["policies"]["ppo"]["kl_to_reference"]["mean"],
        gold_mean=metrics["eval"]["policies"]["ppo"]["gold_mean"],
    )

    # The same PPO with vLLM rollouts (make setup-vllm; the CUDA build on a GPU): its episodes/s beside the above
    if args.tiny:
        results["ppo_vllm"] = {"skipped": "--tiny: tests/test_vllm.py covers the engine on the CPU"}
    else:
        try:
            check_engine("vllm")
        except PipelineError as error:
            results["ppo_vllm"] = {"skipped": str(error)}
        else:
            vllm_dir = out / "ppo_vllm"
            argv = [str(vllm_dir) if a == str(ppo_dir) else a for a in ppo] + ["--generation_engine", "vllm"]
            metrics = stage("ppo_vllm", argv, results, vllm_dir)
            results["ppo_vllm"].update(
                seconds_per_update=metrics["seconds_per_step"],
                episodes_per_second=round(metrics["episodes"] / metrics["train_runtime"], 1),
                kl_to_sft=metrics["eval"]["policies"]["ppo"]["kl_to_reference"]["mean"],
            )

    # QLoRA: the base in 4-bit NF4 (bitsandbytes), a LoRA adapter trained on it in bf16
    qlora_dir = out / "qlora"
    qlora = [*("sft", "--config", str(SANDBOX / "sft/config_lora.yaml")), "--model_name_or_path", str(sft_dir)]
    qlora += ["--output_dir", str(qlora_dir), "--load_in_4bit", "true", "--bnb_4bit_quant_type", "nf4"]
    qlora += ["--dtype", "bfloat16", "--bf16", "true", "--max_steps", str(steps["qlora"])]
    qlora += ["--sandbox_eval_prompts", "0", "--save_strategy", "no", *cpu]
    metrics = stage("qlora", qlora, results, qlora_dir)
    results["qlora"]["train_loss"] = metrics["train_loss"]

    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    json.dump(results, sys.stdout, indent=2)
    print()
    return results


if __name__ == "__main__":
    main()
