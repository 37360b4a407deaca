"""`make bench [QUICK=1]`: our stages beside bare TRL and TRL 1.12's PPOTrainer, as ratios from one run.

Each comparison runs its two sides alternately (A B A B ...), each side in a fresh process, and
reports the median of the per-pair ratios. TRL 1.12.0 is installed (without dependencies, so it runs
on this project's transformers and peft) into `<output_dir>/trl112`, never into the project's venv.
Writes `<output_dir>/bench.json` and `bench.md` once everything has run; each run's log is in
`<output_dir>/logs/`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scripts.bench import settings
from scripts.bench.settings import FULL, LORA, LORA_KEYS, LORA_LEARNING_RATE, QUICK, ROOT, TRAINER_QUIET, Size
from scripts.bench.table import markdown

Result = dict[str, Any]


class BenchError(Exception):
    pass


def install_trl112(target: Path) -> Path:
    """TRL 1.12.0 alone in `target` (reused when already there), to put first on the TRL side's PYTHONPATH."""
    if (target / "trl-1.12.0.dist-info").is_dir():
        return target
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
    done = subprocess.run([*command, "--target", str(partial), settings.TRL112], capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"pip could not install {settings.TRL112} into {partial}: {done.stderr.strip()[-500:]}")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


class Runner:
    """Runs sides in fresh processes, one at a time, with the same threads; logs each run."""

    def __init__(self, work: Path, logs: Path, threads: int, trl112: Path) -> None:
        self.work, self.logs, self.threads, self.trl112 = work, logs, threads, trl112
        self.count = 0

    def __call__(self, side: str, **spec: Any) -> Result:
        self.count += 1
        name = f"{self.count:02d}-{side}"
        folder = self.work / name
        folder.mkdir(parents=True)
        spec = {**spec, "side": side, "threads": self.threads, "work": str(folder), "result": str(folder / "result.json")}
        (folder / "spec.json").write_text(json.dumps(spec, indent=1, default=str))
        paths = [str(self.trl112)] if side.endswith("trl112") else []
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([*paths, str(ROOT)]),
            "OMP_NUM_THREADS": str(self.threads),
            "HF_HUB_OFFLINE": "1",
            "TRL_EXPERIMENTAL_SILENCE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        print(f"[{name}] ...", end="", flush=True, file=sys.stderr)
        started = time.monotonic()
        log = self.logs / f"{name}.log"
        with log.open("w") as out:
            done = subprocess.run(
                [sys.executable, "-m", "scripts.bench.sides", str(folder / "spec.json")],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        print(f" {time.monotonic() - started:.0f} s", file=sys.stderr)
        if done.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
            raise BenchError(f"{side} failed (exit {done.returncode}); its log is {log}: {tail[0]}")
        result = json.loads((folder / "result.json").read_text())
        shutil.rmtree(folder)
        return result


def pairs(run: Runner, count: int, a: tuple[str, dict], b: tuple[str, dict]) -> list[tuple[Result, Result]]:
    """`count` runs of each side, alternating A B A B ..."""
    return [(run(a[0], **a[1]), run(b[0], **b[1])) for _ in range(count)]


def ratios(runs: list[tuple[Result, Result]], key: str, invert: bool = False) -> list[float]:
    """A's figure over B's in each pair (B's over A's with `invert`)."""
    return [(b[key] / a[key]) if invert else (a[key] / b[key]) for a, b in runs]


def put(bench: dict, key: str, values: list[float]) -> None:
    """A key's median over the pairs, its per-pair values beside it."""
    bench[key] = statistics.median(values)
    bench[f"{key}_pairs"] = values


def trainer_spec(size: Size, stage: str, steps: int, model: str, **overrides: Any) -> dict:
    keys = {**TRAINER_QUIET, "model_name_or_path": model, "max_steps": steps, "logging_steps": steps, **overrides}
    return {"recipe": str(size.recipes[stage]), "overrides": keys}


def ppo_specs(size: Size, args: argparse.Namespace, lora: bool) -> tuple[dict, dict]:
    """(ours, TRL 1.12) specs of one PPO comparison: the same models, prompts and settings."""
    ppo = {**size.ppo, "learning_rate": LORA_LEARNING_RATE} if lora else size.ppo
    common = {
        "sft": args.sft,
        "rm": args.rm,
        "episodes": ppo["total_episodes"],
        "gold_prompts": size.gold_prompts,
        "max_new_tokens": size.max_new_tokens,
    }
    ours = {
        **settings.batch_keys(ppo, trl112=False),
        **(LORA_KEYS if lora else {"use_peft": False}),
        "sft_model_path": args.sft,
        "reward_model_path": args.rm,
        "normalize_reward": False,
        "value_learning_rate": None,
        "ptx_dataset_card": None,
        "save_strategy": "no",
        "sandbox_eval_prompts": 0,
        "max_eval_samples": 8,
        "report_to": "none",
    }
    theirs = {"ppo": settings.batch_keys(ppo, trl112=True), "lora": LORA if lora else None, "prompts_card": "data_cards/sandbox_prompts.md"}
    return {**common, "recipe": str(size.recipes["ppo"]), "overrides": ours}, {
        **common,
        **theirs,
        "prompts_split": "ppo",
    }


def compare(run: Runner, size: Size, args: argparse.Namespace, bench: dict) -> dict[str, list]:
    """The comparisons, in pairs; fills `bench` with the ratio keys and returns every run's figures."""
    sft = trainer_spec(size, "sft", size.sft_steps, args.base)
    rm = trainer_spec(size, "rm", size.rm_steps, args.sft)
    runs: dict[str, list] = {}
    runs["sft"] = pairs(run, size.pairs, ("sft-ours", sft), ("sft-trl", sft))
    put(bench, "sft_time_ratio_vs_trl", ratios(runs["sft"], "seconds_per_step"))
    put(bench, "sft_tokens_per_second_ratio_vs_trl", ratios(runs["sft"], "tokens_per_second"))
    runs["rm"] = pairs(run, size.pairs, ("rm-ours", rm), ("rm-trl", rm))
    put(bench, "rm_time_ratio_vs_trl", ratios(runs["rm"], "seconds_per_step"))
    put(bench, "rm_tokens_per_second_ratio_vs_trl", ratios(runs["rm"], "tokens_per_second"))

    gold_spec = {"sft": args.sft, "gold_prompts": size.gold_prompts, "max_new_tokens": size.max_new_tokens}
    bench["sft_gold"] = run("gold-sft", **gold_spec)["gold"]
    for mode, lora in (("ppo", False), ("ppo_lora", True)):
        ours, theirs = ppo_specs(size, args, lora)
        runs[mode] = pairs(run, size.pairs, ("ppo-ours", ours), ("ppo-trl112", theirs))
        put(bench, f"{mode}_speedup_vs_trl112", ratios(runs[mode], "episodes_per_second"))
        put(bench, f"{mode}_rss_ratio_vs_trl112", ratios(runs[mode], "peak_rss_mb"))
        put(bench, f"{mode}_gold_gain", [a["gold"] - bench["sft_gold"] for a, _ in runs[mode]])
        put(bench, f"{mode}_gold_gain_trl112", [b["gold"] - bench["sft_gold"] for _, b in runs[mode]])

    rollout = {
        "sft": args.sft,
        "prompts_card": "data_cards/sandbox_prompts.md",
        "prompts_split": "ppo",
        "rollout_batch": size.rollout_batch,
        "rollout_repeats": size.rollout_repeats,
        "max_new_tokens": size.ppo["response_length"],
    }
    runs["rollout"] = pairs(run, size.pairs, ("rollout-ours", rollout), ("rollout-generate", rollout))
    put(bench, "rollout_ratio_vs_generate", ratios(runs["rollout"], "tokens_per_second"))
    return runs


def memory(run: Runner, size: Size, args: argparse.Namespace, runs: dict[str, list]) -> list[dict]:
    """Peak RSS of our SFT, RM and PPO stages, full vs LoRA vs QLoRA, on the sandbox model and on SmolLM2."""
    median: Callable[[str], float] = lambda mode: statistics.median(a["peak_rss_mb"] for a, _ in runs[mode])  # noqa: E731
    rows = [
        {"model": "sandbox", "stage": "sft", "mode": "full", "peak_rss_mb": median("sft")},
        {"model": "sandbox", "stage": "rm", "mode": "full", "peak_rss_mb": median("rm")},
        {"model": "sandbox", "stage": "ppo", "mode": "full", "peak_rss_mb": median("ppo")},
        {"model": "sandbox", "stage": "ppo", "mode": "lora", "peak_rss_mb": median("ppo_lora")},
    ]
    if not size.memory:
        return rows
    qlora = {**LORA_KEYS, "load_in_4bit": True}
    for mode, keys in (("lora", LORA_KEYS), ("qlora", qlora)):
        for stage, model in (("sft", args.base), ("rm", args.sft)):
            spec = trainer_spec(size, stage, 5, model, **keys)
            rows.append({"model": "sandbox", "stage": stage, "mode": mode, "peak_rss_mb": run(f"{stage}-ours", **spec)["peak_rss_mb"]})
    ours, _ = ppo_specs(size, args, lora=True)
    ours["overrides"] = {**ours["overrides"], "load_in_4bit": True}
    rows.append({"model": "sandbox", "stage": "ppo", "mode": "qlora", "peak_rss_mb": run("ppo-ours", **ours)["peak_rss_mb"]})

    base = args.smollm2
    if not Path(base, "config.json").is_file():
        print(f"no SmolLM2 import at {base} (make import-smollm2): its memory rows are left out", file=sys.stderr)
        return rows
    smollm2 = settings.SMOLLM2
    ppo_small = {"total_episodes": 8, "per_device_train_batch_size": 4, "num_mini_batches": 1, "num_ppo_epochs": 1}  # ours
    for mode, keys in (("full", {"use_peft": False}), ("lora", LORA_KEYS), ("qlora", qlora)):
        for stage in ("sft", "rm"):
            overrides = {**TRAINER_QUIET, "model_name_or_path": base, "max_steps": 2, "logging_steps": 2, **keys}
            spec = {"recipe": str(smollm2 / stage / "config_smoke.yaml"), "overrides": overrides}
            rows.append({"model": "SmolLM2-135M", "stage": stage, "mode": mode, "peak_rss_mb": run(f"{stage}-ours", **spec)["peak_rss_mb"]})
        overrides = {
            **ppo_small,
            **keys,
            "sft_model_path": base,
            "reward_model_path": base,
            "save_strategy": "no",
            "ptx_dataset_card": None,
            "normalize_reward": False,
            "sandbox_eval_prompts": 0,
            "max_eval_samples": 4,
        }
        spec = {
            "recipe": str(smollm2 / "ppo" / "config_smoke.yaml"),
            "overrides": overrides,
            "sft": base,
            "episodes": 8,
            "gold_prompts": 4,
            "max_new_tokens": 8,
        }
        rows.append({"model": "SmolLM2-135M", "stage": "ppo", "mode": mode, "peak_rss_mb": run("ppo-ours", **spec)["peak_rss_mb"]})
    return rows


def machine(threads: int) -> dict:
    import torch
    import transformers
    import trl

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "commit": commit.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one pair of each comparison, small sizes (smoke recipes)")
    parser.add_argument("--output_dir", default="outputs/bench")
    parser.add_argument("--base", default="outputs/demo/base", help="the base model SFT starts from")
    parser.add_argument("--sft", default="outputs/demo/sft", help="the SFT policy (RM and PPO start from it)")
    parser.add_argument("--rm", default="outputs/demo/rm", help="the reward model")
    parser.add_argument("--smollm2", default="outputs/smollm2/base", help="SmolLM2-135M-Instruct for the memory rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every run")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL
    for name in ("base", "sft", "rm"):
        if not Path(getattr(args, name), "config.json").is_file():
            print(f"error: --{name} {getattr(args, name)} is no model folder (make rm builds the demo's)", file=sys.stderr)
            return 2
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        trl112 = install_trl112(output_dir / "trl112")
        logs = output_dir / "logs"
        shutil.rmtree(logs, ignore_errors=True)
        logs.mkdir()
        with tempfile.TemporaryDirectory(dir=output_dir, prefix="runs.") as work:
            run = Runner(Path(work), logs, args.threads, trl112)
            bench: dict[str, Any] = {"machine": machine(args.threads), "quick": args.quick, "pairs": size.pairs}
            runs = compare(run, size, args, bench)
            bench["memory_mb"] = memory(run, size, args, runs)
            bench["runs"] = runs
            bench["ppo_settings"] = size.ppo
            bench["wall_seconds"] = time.monotonic() - started
    except BenchError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    table = markdown(bench)
    for name, text in (("bench.json", json.dumps(bench, indent=1) + "\n"), ("bench.md", table)):
        partial = output_dir / f"{name}.partial"
        partial.write_text(text)
        partial.replace(output_dir / name)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
