"""bench.md: the comparisons with their targets, PPO's time split side by side, and peak memory."""

from __future__ import annotations

import statistics
from typing import Any

# (row, bench key, comparison, figure, better when, target or None)
ROWS = (
    ("SFT seconds per step", "sft_time_ratio_vs_trl", "sft", "seconds_per_step", "ours / TRL", ("<=", 1.03)),
    ("SFT tokens/s", "sft_tokens_per_second_ratio_vs_trl", "sft", "tokens_per_second", "ours / TRL", None),
    ("RM seconds per step", "rm_time_ratio_vs_trl", "rm", "seconds_per_step", "ours / TRL", ("<=", 1.03)),
    ("RM tokens/s", "rm_tokens_per_second_ratio_vs_trl", "rm", "tokens_per_second", "ours / TRL", None),
    ("PPO episodes/s", "ppo_speedup_vs_trl112", "ppo", "episodes_per_second", "ours / TRL 1.12", (">=", 1.5)),
    ("PPO peak RSS (MB)", "ppo_rss_ratio_vs_trl112", "ppo", "peak_rss_mb", "ours / TRL 1.12", ("<=", 0.8)),
    ("PPO LoRA episodes/s", "ppo_lora_speedup_vs_trl112", "ppo_lora", "episodes_per_second", "ours / TRL 1.12", (">=", 1.5)),
    ("PPO LoRA peak RSS (MB)", "ppo_lora_rss_ratio_vs_trl112", "ppo_lora", "peak_rss_mb", "ours / TRL 1.12", ("<=", 0.8)),
    ("Rollout tokens/s", "rollout_ratio_vs_generate", "rollout", "tokens_per_second", "ours / generate", None),
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


def _median(runs: list, index: int, figure: str) -> float:
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
        ours, reference = _median(runs[comparison], 0, figure), _median(runs[comparison], 1, figure)
        pairs = ", ".join(_number(v) for v in bench[f"{key}_pairs"])
        lines.append(
            f"| {row} | {_number(ours)} | {_number(reference)} | {_number(bench[key])} ({ratio}) | {pairs} | "
            f"{_met(bench[key], target)} |"
        )
    for mode, name in (("ppo", "PPO"), ("ppo_lora", "PPO LoRA")):
        ours, theirs = bench[f"{mode}_gold_gain"], bench[f"{mode}_gold_gain_trl112"]
        verdict = "met" if ours >= theirs else "missed"
        lines.append(
            f"| {name} gold gain over SFT ({bench['sft_gold']:.3f}) | {ours:+.3f} | {theirs:+.3f} | | "
            f"{', '.join(f'{a:+.3f}/{b:+.3f}' for a, b in zip(bench[f'{mode}_gold_gain_pairs'], bench[f'{mode}_gold_gain_trl112_pairs'], strict=True))} | "
            f"no worse: {verdict} |"
        )
    lines += [
        "",
        "PPO seconds per update (medians): rollout = sampling; scoring = the no-grad reference, value and "
        "reward passes; learning = the PPO epochs and everything else in the loop.",
        "",
        "| trainer | weights | rollout | scoring | learning | total |",
        "|---|---|---|---|---|---|",
    ]
    for mode, weights in (("ppo", "full"), ("ppo_lora", "LoRA")):
        for index, trainer in ((0, "ours"), (1, "TRL 1.12")):
            split = [_median(runs[mode], index, f"{phase}_seconds_per_update") for phase in PHASES]
            total = _median(runs[mode], index, "seconds_per_update")
            lines.append(f"| {trainer} | {weights} | {' | '.join(_number(s) for s in split)} | {_number(total)} |")
    lines += ["", "Peak RSS of our stages (MB):", "", "| model | stage | full | LoRA | QLoRA |", "|---|---|---|---|---|"]
    cells: dict[tuple[str, str], dict[str, float]] = {}
    for row in bench["memory_mb"]:
        cells.setdefault((row["model"], row["stage"]), {})[row["mode"]] = row["peak_rss_mb"]
    for (model, stage), modes in cells.items():
        values = [_number(modes[m]) if m in modes else "" for m in ("full", "lora", "qlora")]
        lines.append(f"| {model} | {stage} | {' | '.join(values)} |")
    return "\n".join(lines) + "\n"
