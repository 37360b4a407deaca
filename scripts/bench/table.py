"""bench.md: the comparisons with their targets, PPO's time split side by side, and peak memory."""

from __future__ import annotations

import statistics
from typing import Any

OURS_TRL, OURS_TRL112 = "ours / TRL", "ours / TRL 1.12"
FASTER, SMALLER, GLUE = (">=", 1.5), ("<=", 0.8), ("<=", 1.03)
# (row, bench key, comparison, figure, ratio, target or None); rows of comparisons not run are left out
ROWS = (
    ("SFT seconds per step", "sft_time_ratio_vs_trl", "sft", "seconds_per_step", OURS_TRL, GLUE),
    ("SFT tokens/s", "sft_tokens_per_second_ratio_vs_trl", "sft", "tokens_per_second", OURS_TRL, None),
    ("RM seconds per step", "rm_time_ratio_vs_trl", "rm", "seconds_per_step", OURS_TRL, GLUE),
    ("RM tokens/s", "rm_tokens_per_second_ratio_vs_trl", "rm", "tokens_per_second", OURS_TRL, None),
    ("RM, plain pairs, seconds per step", "rm_plain_time_ratio_vs_trl", "rm_plain", "seconds_per_step", OURS_TRL, GLUE),
    ("PPO episodes/s", "ppo_speedup_vs_trl112", "ppo", "episodes_per_second", OURS_TRL112, FASTER),
    ("PPO peak RSS (MB)", "ppo_rss_ratio_vs_trl112", "ppo", "peak_rss_mb", OURS_TRL112, SMALLER),
    ("PPO LoRA episodes/s", "ppo_lora_speedup_vs_trl112", "ppo_lora", "episodes_per_second", OURS_TRL112, FASTER),
    ("PPO LoRA peak RSS (MB)", "ppo_lora_rss_ratio_vs_trl112", "ppo_lora", "peak_rss_mb", OURS_TRL112, SMALLER),
    (
        "SmolLM2 PPO episodes/s",
        "ppo_smollm2_speedup_vs_trl112",
        "ppo_smollm2",
        "episodes_per_second",
        OURS_TRL112,
        FASTER,
    ),
    (
        "SmolLM2 PPO peak RSS (MB)",
        "ppo_smollm2_rss_ratio_vs_trl112",
        "ppo_smollm2",
        "peak_rss_mb",
        OURS_TRL112,
        SMALLER,
    ),
    (
        "SmolLM2 PPO LoRA episodes/s",
        "ppo_smollm2_lora_speedup_vs_trl112",
        "ppo_smollm2_lora",
        "episodes_per_second",
        OURS_TRL112,
        FASTER,
    ),
    (
        "SmolLM2 PPO LoRA peak RSS (MB)",
        "ppo_smollm2_lora_rss_ratio_vs_trl112",
        "ppo_smollm2_lora",
        "peak_rss_mb",
        OURS_TRL112,
        SMALLER,
    ),
    ("Rollout tokens/s", "rollout_ratio_vs_generate", "rollout", "tokens_per_second", "ours / generate", None),
    # SmolLM2 in fp32 (ours) against bf16 (reference); the ratio is bf16's speedup
    *(
        (f"SmolLM2 {row}, fp32 / bf16", key, key, figure, "bf16 speedup", None)
        for row, key, figure in (
            ("LoRA SFT seconds per step", "smollm2_sft_bf16_speedup", "seconds_per_step"),
            ("LoRA RM seconds per step", "smollm2_rm_bf16_speedup", "seconds_per_step"),
            ("LoRA PPO episodes/s", "smollm2_ppo_bf16_speedup", "episodes_per_second"),
            ("sampling tokens/s", "smollm2_sampling_bf16_speedup", "tokens_per_second"),
        )
    ),
    (
        "SmolLM2 LoRA PPO episodes/s, both in bf16",
        "ppo_bf16_speedup_vs_trl112",
        "ppo_bf16_speedup_vs_trl112",
        "episodes_per_second",
        OURS_TRL112,
        None,
    ),
    (
        "SmolLM2 rollout tokens/s in bf16",
        "smollm2_rollout_bf16_ratio_vs_generate",
        "smollm2_rollout_bf16_ratio_vs_generate",
        "tokens_per_second",
        "ours / generate",
        None,
    ),
)
# vLLM (`generation_engine: vllm`, the first side) against the pipeline's sampler on SmolLM2 (`compare_engines`)
VLLM, SAMPLER = "vLLM speedup", (">=", 1.8)
ROWS += (
    ("SmolLM2 sampling tokens/s, bf16", "vllm_sampling_speedup", "vllm_sampling", "tokens_per_second", VLLM, SAMPLER),
    ("SmolLM2 PPO rollout s", "vllm_ppo_rollout_speedup", "vllm_ppo", "rollout_seconds_per_update", VLLM, SAMPLER),
    ("SmolLM2 PPO episodes/s", "vllm_ppo_speedup", "vllm_ppo", "episodes_per_second", VLLM, None),
    ("SmolLM2 label seconds", "vllm_label_speedup", "vllm_label", "seconds", VLLM, FASTER),
    ("SmolLM2 eval seconds", "vllm_eval_speedup", "vllm_eval", "seconds", VLLM, FASTER),
)
PPO_MODES = (
    ("ppo", "sandbox", "full"),
    ("ppo_lora", "sandbox", "LoRA"),
    ("ppo_smollm2", "SmolLM2", "full"),
    ("ppo_smollm2_lora", "SmolLM2", "LoRA"),
)
PHASES = ("rollout", "scoring", "learning")


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def _met(value: float, target: tuple[str, float] | None) -> str:
    if target is None:
        return ""
    sign, bound = target
    met = value <= bound if sign == "<=" else value >= bound
    return f"{sign} {bound}: {'met' if met else 'missed'}"


def median_of(runs: list, index: int, figure: str) -> float:
    return statistics.median(pair[index][figure] for pair in runs)


def markdown(bench: dict[str, Any]) -> str:
    machine = bench["machine"]
    lines = [
        f"# Benchmark ({'quick' if bench['quick'] else 'full'}, {bench['pairs']} pair(s) per comparison)",
        "",
        f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch threads; torch {machine['torch']}, "
        f"transformers {machine['transformers']}, trl {machine['trl']} (and 1.12.0 for its PPOTrainer); "
        f"commit {machine['commit']}, {machine['date']}, {bench['wall_seconds'] / 60:.0f} min.",
        "",
        "| figure | ours | reference | ratio (median) | per pair | target |",
        "|---|---|---|---|---|---|",
    ]
    runs = bench["runs"]
    for row, key, comparison, figure, ratio, target in ROWS:
        if comparison not in runs:
            continue
        ours, reference = median_of(runs[comparison], 0, figure), median_of(runs[comparison], 1, figure)
        pairs = ", ".join(_number(v) for v in bench[f"{key}_pairs"])
        lines.append(
            f"| {row} | {_number(ours)} | {_number(reference)} | {_number(bench[key])} ({ratio}) | {pairs} | "
            f"{_met(bench[key], target)} |"
        )
    for mode, name in (("ppo", "PPO"), ("ppo_lora", "PPO LoRA")):
        if f"{mode}_gold_gain" not in bench:  # --only engines
            continue
        ours, theirs = bench[f"{mode}_gold_gain"], bench[f"{mode}_gold_gain_trl112"]
        pairs = zip(bench[f"{mode}_gold_gain_pairs"], bench[f"{mode}_gold_gain_trl112_pairs"], strict=True)
        gain = f"{name} gold gain over SFT ({bench['sft_gold']:.3f}); per seed: ours/TRL"
        lines.append(
            f"| {gain} | {ours:+.3f} | {theirs:+.3f} | | "
            f"{', '.join(f'{a:+.3f}/{b:+.3f}' for a, b in pairs)} | no worse: {'met' if ours >= theirs else 'missed'} |"
        )
    lines += [
        "",
        "PPO seconds per update (medians): rollout = sampling; scoring = the no-grad reference, value and "
        "reward passes; learning = the PPO epochs and everything else in the loop.",
        "",
        "| model | weights | trainer | rollout | scoring | learning | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, model, weights in (*PPO_MODES, ("vllm_ppo", "SmolLM2 demo recipe", "LoRA")):
        trainers = ((0, "ours, vLLM"), (1, "ours, torch")) if mode == "vllm_ppo" else ((0, "ours"), (1, "TRL 1.12"))
        for index, trainer in trainers:
            if mode not in runs:
                continue
            split = [median_of(runs[mode], index, f"{phase}_seconds_per_update") for phase in PHASES]
            total = _number(median_of(runs[mode], index, "seconds_per_update"))
            lines.append(f"| {model} | {weights} | {trainer} | {' | '.join(_number(s) for s in split)} | {total} |")
    lines += [
        "",
        "Peak RSS of our stages (MB):",
        "",
        "| model | stage | full | LoRA | QLoRA |",
        "|---|---|---|---|---|",
    ]
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for row in bench["memory_mb"]:
        cells.setdefault((row["model"], row["stage"]), {})[row["mode"]] = row["peak_rss_mb"]
    for (model, stage), modes in cells.items():
        values = [_number(modes[m]) if m in modes else "" for m in ("full", "lora", "qlora")]
        lines.append(f"| {model} | {stage} | {' | '.join(values)} |")
    if bench.get("engine_memory_mb"):
        lines += ["", "Peak RSS of SmolLM2 stages by engine (MB; vLLM's engine process apart):", ""]
        lines += ["| stage | torch | vLLM: pipeline | vLLM: engine |", "|---|---|---|---|"]
        lines += [
            f"| {r['stage']} | {_number(r['torch'])} | {_number(r['vllm'])} | {_number(r['vllm_engine'])} |"
            for r in bench["engine_memory_mb"]
        ]
    return "\n".join(lines) + "\n"
