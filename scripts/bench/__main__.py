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
from scripts.bench.table import markdown, median_of
from scripts.reward_head import untrained_reward_model

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
        spec = {
            **spec,
            "side": side,
            "threads": self.threads,
            "work": str(folder),
            "result": str(folder / "result.json"),
        }
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


def pairs(run: Runner, count: int, sides: Callable[[int], tuple[tuple[str, dict], tuple[str, dict]]]) -> list:
    """`count` runs of each side, alternating A B A B ...; `sides(i)` gives the i-th pair's (side, spec)s."""
    runs = []
    for index in range(count):
        (a, a_spec), (b, b_spec) = sides(index)
        runs.append((run(a, **a_spec), run(b, **b_spec)))
    return runs


def ratios(runs: list[tuple[Result, Result]], key: str, invert: bool = False) -> list[float]:
    """A's figure over B's in each pair (B's over A's with `invert`)."""
    return [(b[key] / a[key]) if invert else (a[key] / b[key]) for a, b in runs]


def put(bench: dict, key: str, values: list[float]) -> None:
    """A key's median over the pairs, its per-pair values beside it."""
    bench[key] = statistics.median(values)
    bench[f"{key}_pairs"] = values


def trainer_spec(recipe: Path, steps: int, model: str, **overrides: Any) -> dict:
    keys = {**TRAINER_QUIET, "model_name_or_path": model, "max_steps": steps, "logging_steps": steps, **overrides}
    return {"recipe": str(recipe), "overrides": keys}


def ppo_specs(recipe: Path, ppo: dict, sft: str, rm: str, lora: bool, gold_prompts: int, max_new_tokens: int) -> tuple:
    """(ours, TRL 1.12) specs of one PPO run each: the same models, prompts and settings."""
    common = {
        "sft": sft,
        "rm": rm,
        "episodes": ppo["total_episodes"],
        "gold_prompts": gold_prompts,
        "max_new_tokens": max_new_tokens,
    }
    ours = {
        **settings.batch_keys(ppo, trl112=False),
        **(LORA_KEYS if lora else {"use_peft": False}),
        "sft_model_path": sft,
        "reward_model_path": rm,
        "normalize_reward": False,
        "value_learning_rate": None,
        "ptx_dataset_card": None,
        "save_strategy": "no",
        "sandbox_eval_prompts": 0,
        "max_eval_samples": 4,
        "report_to": "none",
    }
    theirs = {
        "ppo": settings.batch_keys(ppo, trl112=True),
        "lora": LORA if lora else None,
        "prompts_card": "data_cards/sandbox_prompts.md",
        "prompts_split": "ppo",
    }
    return ("ppo-ours", {**common, "recipe": str(recipe), "overrides": ours}), ("ppo-trl112", {**common, **theirs})


def compare_ppo(
    run: Runner, bench: dict, runs: dict, prefix: str, count: int, ppo: dict, recipe: Path, models: tuple
) -> None:
    """Full and LoRA PPO comparisons, pair i with seed i: speed and memory ratios, and gold gains when measured.

    `models` are (SFT policy, reward model, gold prompts, gold max_new_tokens) as `ppo_specs` takes them.
    """
    for name, lora in ((prefix, False), (f"{prefix}_lora", True)):
        keys = {**ppo, "learning_rate": LORA_LEARNING_RATE} if lora else ppo

        def specs(seed: int, keys: dict = keys, lora: bool = lora) -> tuple:
            sft, rm, gold_prompts, max_new_tokens = models
            return ppo_specs(recipe, {**keys, "seed": seed}, sft, rm, lora, gold_prompts, max_new_tokens)

        runs[name] = pairs(run, count, specs)
        put(bench, f"{name}_speedup_vs_trl112", ratios(runs[name], "episodes_per_second"))
        put(bench, f"{name}_rss_ratio_vs_trl112", ratios(runs[name], "peak_rss_mb"))
        if "gold" in runs[name][0][0]:
            put(bench, f"{name}_gold_gain", [a["gold"] - bench["sft_gold"] for a, _ in runs[name]])
            put(bench, f"{name}_gold_gain_trl112", [b["gold"] - bench["sft_gold"] for _, b in runs[name]])


def compare(run: Runner, size: Size, args: argparse.Namespace, bench: dict) -> dict[str, list]:
    """The comparisons, in pairs; fills `bench` with the ratio keys and returns every run's figures."""
    runs: dict[str, list] = {}
    sft = trainer_spec(size.recipes["sft"], size.sft_steps, args.base)
    runs["sft"] = pairs(run, size.pairs, lambda _: (("sft-ours", sft), ("sft-trl", sft)))
    put(bench, "sft_time_ratio_vs_trl", ratios(runs["sft"], "seconds_per_step"))
    put(bench, "sft_tokens_per_second_ratio_vs_trl", ratios(runs["sft"], "tokens_per_second"))
    rm = trainer_spec(size.recipes["rm"], size.rm_steps, args.sft)
    for name, ours in (("rm", rm), ("rm_plain", {**rm, "plain": True})):
        runs[name] = pairs(run, size.pairs, lambda _, ours=ours: (("rm-ours", ours), ("rm-trl", rm)))
        put(bench, f"{name}_time_ratio_vs_trl", ratios(runs[name], "seconds_per_step"))
        put(bench, f"{name}_tokens_per_second_ratio_vs_trl", ratios(runs[name], "tokens_per_second"))

    gold_spec = {"sft": args.sft, "gold_prompts": size.gold_prompts, "max_new_tokens": size.max_new_tokens}
    bench["sft_gold"] = run("gold-sft", **gold_spec)["gold"]
    models = (args.sft, args.rm, size.gold_prompts, size.max_new_tokens)
    compare_ppo(run, bench, runs, "ppo", size.pairs, size.ppo, size.recipes["ppo"], models)
    if size.smollm2 and has_smollm2(args):
        # A real vocabulary; the base model is policy and, with a new score head, reward model: speed and memory only
        rm = untrained_reward_model(args.smollm2, Path(args.output_dir) / "smollm2_rm")
        recipe, models = settings.SMOLLM2_PPO_RECIPE, (args.smollm2, str(rm), 0, 0)
        compare_ppo(run, bench, runs, "ppo_smollm2", size.pairs, settings.PPO_SMOLLM2, recipe, models)

    if size.smollm2 and has_smollm2(args):
        compare_precision(run, size, args, bench, runs)
    rollout = {
        "sft": args.sft,
        "prompts_card": "data_cards/sandbox_prompts.md",
        "prompts_split": "ppo",
        "rollout_batch": size.rollout_batch,
        "rollout_repeats": size.rollout_repeats,
        "max_new_tokens": size.ppo["response_length"],
    }
    runs["rollout"] = pairs(run, size.pairs, lambda _: (("rollout-ours", rollout), ("rollout-generate", rollout)))
    put(bench, "rollout_ratio_vs_generate", ratios(runs["rollout"], "tokens_per_second"))
    if size.smollm2 and has_smollm2(args) and has_vllm():
        compare_engines(run, size, args, bench, runs)
    return runs


def compare_precision(run: Runner, size: Size, args: argparse.Namespace, bench: dict, runs: dict) -> None:
    """SmolLM2's LoRA stages and sampler, fp32 against bf16 (`bf16: true`), in pairs: `smollm2_*_bf16_speedup`."""
    base, bf16 = args.smollm2, {"bf16": True, "use_cpu": True}

    def in_bf16(spec: dict, key: str = "overrides") -> dict:
        return {**spec, key: {**spec[key], **bf16}}

    def in_fp32(spec: dict) -> dict:  # whatever the recipe says
        return {**spec, "overrides": {**spec["overrides"], "bf16": False, "use_cpu": True}}

    def measure(name: str, a: tuple[str, dict], b: tuple[str, dict], key: str, invert: bool = False) -> None:
        runs[name] = pairs(run, size.pairs, lambda _: (a, b))
        put(bench, name, ratios(runs[name], key, invert))

    # The demo's recipes; the RM reads the comparisons shipped with the repository, not the demo's labels
    data = {"sft": {}, "rm": {"dataset_card": "data_cards/sandbox_comparisons_static.md"}}
    for stage in ("sft", "rm"):
        fp32 = in_fp32(
            trainer_spec(settings.SMOLLM2 / stage / "config_demo.yaml", size.precision_steps, base, **data[stage])
        )
        side = f"{stage}-ours"
        measure(f"smollm2_{stage}_bf16_speedup", (side, fp32), (side, in_bf16(fp32)), "seconds_per_step")
    rm = str(untrained_reward_model(base, Path(args.output_dir) / "smollm2_rm"))
    keys = {**settings.PPO_SMOLLM2, "learning_rate": LORA_LEARNING_RATE}
    (ours, fp32), (theirs, trl_fp32) = ppo_specs(settings.SMOLLM2_PPO_RECIPE, keys, base, rm, True, 0, 0)
    fp32, half = in_fp32(fp32), in_bf16(fp32)
    measure("smollm2_ppo_bf16_speedup", (ours, fp32), (ours, half), "episodes_per_second", invert=True)
    measure("ppo_bf16_speedup_vs_trl112", (ours, half), (theirs, in_bf16(trl_fp32, "ppo")), "episodes_per_second")
    rollout = {
        "sft": base,
        "prompts_card": "data_cards/sandbox_prompts.md",
        "prompts_split": "ppo",
        "rollout_batch": size.rollout_batch // 2,
        "rollout_repeats": size.rollout_repeats // 2,
        "max_new_tokens": keys["response_length"],
    }
    half = {**rollout, "bf16": True}
    sampler = "rollout-ours"
    measure("smollm2_sampling_bf16_speedup", (sampler, rollout), (sampler, half), "tokens_per_second", invert=True)
    measure("smollm2_rollout_bf16_ratio_vs_generate", (sampler, half), ("rollout-generate", half), "tokens_per_second")


def compare_engines(run: Runner, size: Size, args: argparse.Namespace, bench: dict, runs: dict) -> None:
    """SmolLM2 sampled by vLLM against the pipeline's own sampler, in pairs (vLLM first): `vllm_*_speedup`."""
    base, rm = args.smollm2, str(untrained_reward_model(args.smollm2, Path(args.output_dir) / "smollm2_rm"))

    def measure(name: str, comparison: str, spec: Callable[[str], tuple[str, dict]], key: str, invert: bool) -> None:
        if comparison not in runs:
            runs[comparison] = pairs(run, size.pairs, lambda _: (spec("vllm"), spec("torch")))
        put(bench, name, ratios(runs[comparison], key, invert))

    # The sampler alone: 64 prompts x 24 tokens, bf16 weights (the engine's start is not timed)
    rollout = {
        "sft": base,
        "prompts_card": "data_cards/sandbox_prompts.md",
        "prompts_split": "ppo",
        "rollout_batch": size.rollout_batch,
        "rollout_repeats": size.rollout_repeats,
        "max_new_tokens": 24,
        "bf16": True,
    }
    sampler = {"vllm": "rollout-vllm", "torch": "rollout-ours"}
    measure("vllm_sampling_speedup", "vllm_sampling", lambda e: (sampler[e], rollout), "tokens_per_second", False)

    # PPO with the SmolLM2 demo's recipe (LoRA, fp32, 16 episodes an update), 4 updates
    episodes = 64
    overrides = {
        "sft_model_path": base,
        "reward_model_path": rm,
        "total_episodes": episodes,
        "normalize_reward": False,
        "save_strategy": "no",
        "sandbox_eval_prompts": 0,
        "max_eval_samples": 4,
    }

    def ppo(engine: str) -> tuple[str, dict]:
        recipe = str(settings.SMOLLM2 / "ppo/config_demo.yaml")
        spec = {"recipe": recipe, "episodes": episodes, "gold_prompts": 0, "max_new_tokens": 0}
        return "ppo-ours", {**spec, "overrides": {**overrides, "generation_engine": engine}}

    measure("vllm_ppo_rollout_speedup", "vllm_ppo", ppo, "rollout_seconds_per_update", True)
    measure("vllm_ppo_speedup", "vllm_ppo", ppo, "episodes_per_second", False)

    # Whole stages, the engine's start included: the demo's label recipe on 140 prompts x 4 samples, and an
    # evaluation of two policies (the second's KL to the first) on 50 prompts, greedy and 4 samples each
    label = ["label", "--config", str(settings.SMOLLM2 / "label/config_demo.yaml"), "--model_name_or_path", base]
    label += ["--prompts_per_family", "20"]
    evaluation = ["eval", "--policies", f"sft={base}", f"policy={base}", "--num_prompts", "50", "--max_new_tokens"]
    evaluation += ["24", "--batch_size", "50", "--num_samples", "4", "--best_of_n", "0", "--bf16", "auto"]
    for stage, argv in (("label", label), ("eval", evaluation)):
        measure(
            f"vllm_{stage}_speedup",
            f"vllm_{stage}",
            lambda e, argv=argv: ("stage", {"argv": [*argv, "--generation_engine", e]}),
            "seconds",
            True,
        )
    bench["engine_memory_mb"] = [
        {
            "stage": stage,
            "torch": median_of(runs[f"vllm_{stage}"], 1, "peak_rss_mb"),
            "vllm": median_of(runs[f"vllm_{stage}"], 0, "peak_rss_mb"),
            "vllm_engine": median_of(runs[f"vllm_{stage}"], 0, "engine_peak_rss_mb"),
        }
        for stage in ("label", "eval")
    ]


def has_vllm() -> bool:
    from pipeline.errors import PipelineError
    from pipeline.vllm_engine import vllm_python

    try:
        vllm_python()
    except PipelineError as error:
        print(f"{error}: the vLLM rows are left out", file=sys.stderr)
        return False
    return True


def has_smollm2(args: argparse.Namespace) -> bool:
    if Path(args.smollm2, "config.json").is_file():
        return True
    print(f"no SmolLM2 import at {args.smollm2} (make import-smollm2): its rows are left out", file=sys.stderr)
    return False


def memory(run: Runner, size: Size, args: argparse.Namespace, runs: dict[str, list]) -> list[dict]:
    """Peak RSS of our SFT, RM and PPO stages, full vs LoRA vs QLoRA, on the sandbox model and on SmolLM2."""
    rows = []

    def row(model: str, stage: str, mode: str, peak: float) -> None:
        rows.append({"model": model, "stage": stage, "mode": mode, "peak_rss_mb": peak})

    def median(name: str) -> float:
        return statistics.median(a["peak_rss_mb"] for a, _ in runs[name])

    for stage, mode, name in (
        ("sft", "full", "sft"),
        ("rm", "full", "rm"),
        ("ppo", "full", "ppo"),
        ("ppo", "lora", "ppo_lora"),
    ):
        row("sandbox", stage, mode, median(name))
    if "ppo_smollm2" in runs:
        row("SmolLM2-135M", "ppo", "full", median("ppo_smollm2"))
        row("SmolLM2-135M", "ppo", "lora", median("ppo_smollm2_lora"))
    if not size.memory:
        return rows
    qlora = {**LORA_KEYS, "load_in_4bit": True}

    def qlora_ppo(recipe: Path, ppo: dict, sft: str, rm: str) -> float:
        (_, ours), _ = ppo_specs(recipe, ppo, sft, rm, True, 0, 0)
        return run("ppo-ours", **{**ours, "overrides": {**ours["overrides"], "load_in_4bit": True}})["peak_rss_mb"]

    for mode, keys in (("lora", LORA_KEYS), ("qlora", qlora)):
        for stage, model in (("sft", args.base), ("rm", args.sft)):
            spec = trainer_spec(size.recipes[stage], 5, model, **keys)
            row("sandbox", stage, mode, run(f"{stage}-ours", **spec)["peak_rss_mb"])
    row("sandbox", "ppo", "qlora", qlora_ppo(size.recipes["ppo"], size.ppo, args.sft, args.rm))
    if "ppo_smollm2" not in runs:  # not imported
        return rows
    base = args.smollm2
    for mode, keys in (("full", {"use_peft": False}), ("lora", LORA_KEYS), ("qlora", qlora)):
        for stage in ("sft", "rm"):
            spec = trainer_spec(settings.SMOLLM2 / stage / "config_smoke.yaml", 2, base, **keys)
            row("SmolLM2-135M", stage, mode, run(f"{stage}-ours", **spec)["peak_rss_mb"])
    row(
        "SmolLM2-135M",
        "ppo",
        "qlora",
        qlora_ppo(settings.SMOLLM2_PPO_RECIPE, settings.PPO_SMOLLM2, base, base),
    )
    return rows


def machine(threads: int) -> dict:
    import torch
    import transformers
    import trl

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
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
    parser.add_argument("--smollm2", default="outputs/smollm2/base", help="SmolLM2-135M-Instruct, for its rows")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every run")
    parser.add_argument("--only", choices=("engines",), help="engines: only vLLM against our sampler (SmolLM2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = QUICK if args.quick else FULL
    for name in ("base", "sft", "rm"):
        if not Path(getattr(args, name), "config.json").is_file():
            print(
                f"error: --{name} {getattr(args, name)} is no model folder (make rm builds the demo's)", file=sys.stderr
            )
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
            if args.only == "engines":
                runs: dict[str, list] = {}
                if has_smollm2(args) and has_vllm():
                    compare_engines(run, size, args, bench, runs)
                bench["memory_mb"] = []
            else:
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
