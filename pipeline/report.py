"""`report.md` for a chain: the stages' times and metrics, training curves, the reward-vs-KL picture,
per-family gold bars and sample responses, from what the stages wrote (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from pipeline import chain as chains  # noqa: E402
from pipeline import outputs, reading  # noqa: E402
from pipeline.chain import Chain, Step, is_current  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.registry import STAGES  # noqa: E402

FIGURES = "figures"
TRAINED_STAGES = ("base", "sft", "rm")  # their loss curves
RL_STAGES = ("ppo", "rloo", "grpo")
# Our PPO log's keys, and those of TRL's RLOO/GRPO logs (`reward`: the RM alone, the gold judge weighs 0).
PPO_KEYS = {"score": "objective/rm_score", "gold": "objective/gold", "entropy": "objective/token_entropy"}
TRL_KEYS = {"score": "reward", "gold": "rewards/gold/mean", "entropy": "entropy"}


def _log(folder: Path) -> list[dict]:
    path = folder / outputs.LOG_FILE
    try:
        return [json.loads(line) for line in reading.read_text(path).splitlines()] if path.is_file() else []
    except ValueError as error:
        raise PipelineError(f"{path}: a line is not valid JSON ({error})") from error


def _json(path: Path) -> dict:
    return reading.read_json_object(path) if path.is_file() else {}


def _save(figure: plt.Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"{FIGURES}/{path.name}"


def _stage(step: Step) -> str:
    return step.argv[0]


def training_curves(steps: list[Step], figures: Path) -> str | None:
    """Loss of the base, SFT and RM stages by step, with the RM's training accuracy."""
    logs = {step: [r for r in _log(step.output) if "loss" in r] for step in steps if _stage(step) in TRAINED_STAGES}
    logs = {step: rows for step, rows in logs.items() if rows}
    if not logs:
        return None
    figure, axes = plt.subplots(1, len(logs), figsize=(13 / 3 * len(logs), 3.6), squeeze=False)
    for ax, (step, rows) in zip(axes[0], logs.items(), strict=True):
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label="training loss")
        if "accuracy" in rows[0]:
            ax.plot([r["step"] for r in rows], [r["accuracy"] for r in rows], marker=".", label="training accuracy")
        ax.set(title=f"{STAGES[_stage(step)].title} ({step.name})", xlabel="optimizer step")
        ax.set_ylabel("loss / pair accuracy" if "accuracy" in rows[0] else "loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, figures / "training_curves.png")


def rl_runs(steps: list[Step], names: dict[Path, str]) -> dict[str, list[dict]]:
    """Each RL run's rollout statistics by episode: score (RM), gold, entropy and, for PPO, KL to SFT; named
    as the evaluation names its policy (`names`: output folder -> name), else as its step."""
    runs = {}
    for step in (step for step in steps if _stage(step) in RL_STAGES):
        name, rows = names.get(step.output, step.name), _log(step.output)
        if _stage(step) == "ppo":
            runs[name] = [
                {"episodes": r["episode"], "kl": r["objective/kl"], **{k: r.get(v) for k, v in PPO_KEYS.items()}}
                for r in rows
            ]
            continue
        recipe = outputs.read_recipe_file(step.output)
        # TRL counts optimiser steps; each rollout sample is used num_iterations times.
        per_step = recipe.get("per_device_train_batch_size", 1) / recipe.get("num_iterations", 1)
        runs[name] = [
            {"episodes": r["step"] * per_step, **{k: r.get(v) for k, v in TRL_KEYS.items()}}
            for r in rows
            if TRL_KEYS["score"] in r
        ]
    return {name: rows for name, rows in runs.items() if rows}


def rl_curves(runs: dict[str, list[dict]], colors: dict[str, str], figures: Path) -> str | None:
    """RM score, gold score, entropy and (PPO) KL of the rollouts, by episode."""
    if not runs:
        return None
    panels = [
        ("score", "reward-model score (raw)"),
        ("gold", "gold score (sandbox judge)"),
        ("entropy", "entropy (nats / token)"),
        ("kl", "PPO: KL to SFT (nats / response)"),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name, rows in runs.items():
            rows = [r for r in rows if r.get(key) is not None]
            if rows:
                episodes, values = [r["episodes"] for r in rows], [r[key] for r in rows]
                ax.plot(episodes, values, color=colors[name], label=name)
        ax.set(title=title, xlabel="episodes")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, figures / "rl_training.png")


def reward_vs_kl(runs: dict[str, list[dict]], evaluation: dict, colors: dict[str, str], figures: Path) -> str | None:
    """Proxy (RM) and gold score against the KL spent (Gao et al. 2022): the reference's best-of-n frontier,
    every evaluated policy's sampled answers (95% intervals), and the path of each PPO run's rollouts."""
    ppo = {name: rows for name, rows in runs.items() if rows and "kl" in rows[0]}
    found = evaluation.get("policies", {})
    ends = {
        n: found[n]
        for n in evaluation.get("names", found)
        if found[n].get("kl_to_reference") is not None and n not in (evaluation.get("reference"), "base")
    }
    frontier = evaluation.get("best_of_n", [])
    if not ppo and not ends and not frontier:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    panels = (
        ("score", "rm_score_sampled", "rm_picked_rm", "Proxy: reward-model score"),
        ("gold", "gold_sampled", "rm_picked_gold", "Gold score"),
    )
    for ax, (key, end_key, frontier_key, title) in zip(axes, panels, strict=True):
        if frontier and frontier_key in frontier[0]:
            xs = [p["kl"] ** 0.5 for p in frontier]
            picked = [p[frontier_key] for p in frontier]
            if isinstance(picked[0], dict) and picked[0]["ci"] is not None:
                low, high = [p["ci"][0] for p in picked], [p["ci"][1] for p in picked]
                ax.fill_between(xs, low, high, color="black", alpha=0.12)
            picked = [p["mean"] if isinstance(p, dict) else p for p in picked]
            label = f"best-of-n of {evaluation['reference']}, RM picks (n = 1..{frontier[-1]['n']})"
            ax.plot(xs, picked, marker="o", markersize=3, color="black", label=label)
            if key == "gold":
                gold_picked = [p["gold_picked_gold"] for p in frontier]
                ax.plot(xs, gold_picked, linestyle="--", color="grey", label="best-of-n, gold picks (ceiling)")
        for name, rows in ppo.items():
            xs = [max(r["kl"], 0.0) ** 0.5 for r in rows]
            label = f"{name} rollouts (training prompts)"
            ax.plot(xs, [r[key] for r in rows], marker=".", alpha=0.6, color=colors[name], label=label)
        for name, policy in ends.items():
            if policy.get(end_key) is None:
                continue
            x, point = max(policy["kl_to_reference"]["mean"], 0.0) ** 0.5, policy[end_key]
            low, high = point["ci"] or (point["mean"], point["mean"])
            error = [[point["mean"] - low], [high - point["mean"]]]
            ax.errorbar(
                [x],
                [point["mean"]],
                yerr=error,
                fmt="*",
                markersize=12,
                capsize=4,
                zorder=3,
                color=colors[name],
                label=f"{name} (held-out prompts)",
            )
        ax.set(title=title, xlabel="sqrt(KL to the reference), KL in nats per response", ylabel="mean score, T = 1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    return _save(figure, figures / "reward_vs_kl.png")


def gold_by_family(evaluation: dict, colors: dict[str, str], figures: Path) -> str | None:
    """Grouped bars: gold per task family for every evaluated policy."""
    found = evaluation.get("policies", {})
    names = evaluation.get("names", list(found))
    policies = {n: found[n]["gold_by_family"] for n in names if "gold_by_family" in found[n]}
    if not policies:
        return None
    families = sorted(next(iter(policies.values())))
    width = 0.8 / len(policies)
    figure, ax = plt.subplots(figsize=(11, 4))
    for i, (name, by_family) in enumerate(policies.items()):
        xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(families))]
        ax.bar(xs, [by_family[f] for f in families], width, label=name, color=colors[name])
    ax.set_xticks(range(len(families)), families)
    ax.set(ylim=(0, 1.05), ylabel="mean gold score (greedy)", title="Gold score per task family, held-out prompts")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=len(policies), loc="upper center", bbox_to_anchor=(0.5, -0.1), frameon=False)
    return _save(figure, figures / "gold_by_family.png")


def _figure(value: dict | None, sign: str = "") -> str:
    """A mean with its interval, as a table cell."""
    if value is None:
        return "-"
    if value["ci"] is None:
        return f"{value['mean']:{sign}.3f}"
    return f"{value['mean']:{sign}.3f} [{value['ci'][0]:{sign}.3f}, {value['ci'][1]:{sign}.3f}]"


def training_cost(folder: Path, stage: str) -> tuple[float | None, str]:
    """(training seconds, what the stage trained on) from a policy's output folder."""
    metrics = _json(folder / outputs.METRICS_FILE)
    seconds, steps = metrics.get("train_runtime"), metrics.get("train_steps", 0)
    seen = steps * metrics.get("effective_batch_size", 0)
    if not steps:
        return seconds, "-"
    if stage == "ppo":
        return seconds, f"{metrics.get('episodes', 0):,} episodes"
    if stage in ("rloo", "grpo"):
        # TRL's batch is completions, each used num_iterations times
        used = seen // outputs.read_recipe_file(folder).get("num_iterations", 1)
        return seconds, f"{used:,} completions"
    if stage == "dpo":
        rows = metrics.get("train_rows") or seen
        return seconds, f"{seen:,} pairs ({seen / rows:.1f} epochs of {rows:,})"
    if stage == "sft":
        return seconds, f"{seen:,} demonstrations"
    return seconds, "-"


def side_by_side(evaluation: dict, steps: dict[str, Step]) -> list[str]:
    """Every evaluated policy in one table against the reference (SFT): gold greedy and sampled, paired
    differences and win-rates with intervals, KL, and what its training cost; RM-picked best-of-n of the
    reference's samples below them. `steps`: the chain step that made each policy, by its evaluation name."""
    reference, policies = evaluation.get("reference"), evaluation.get("policies", {})
    if reference is None or "gold" not in policies.get(reference, {}):
        return []
    lines = [
        f"On {evaluation['prompts']} held-out prompts; gold = the sandbox judge (0.5 correctness + 0.5 style); "
        f"brackets: 95% bootstrap intervals over prompts, paired by prompt for differences and win-rates "
        f"(gold, greedy answers); KL to {reference} in nats per answer; training seconds as the stage measured them.",
        "",
        f"| policy | gold greedy | gold sampled | greedy - {reference} | sampled - {reference} | win vs {reference} "
        f"| win vs rule | KL to {reference} | training s | trained on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in evaluation.get("names", list(policies)):
        policy = policies[name]
        if "gold" not in policy:
            continue
        own = name == reference
        difference = evaluation.get("gold_difference", {}).get(name, {}).get(reference)
        sampled = evaluation.get("gold_sampled_difference", {}).get(name, {}).get(reference)
        wins = evaluation.get("gold_win_rate", {}).get(name, {})
        step = steps.get(name)
        seconds, data = training_cost(step.output, _stage(step)) if step is not None else (None, "-")
        cells = [
            _figure(policy["gold"]),
            _figure(policy.get("gold_sampled")),
            "-" if own else _figure(difference, "+"),
            "-" if own else _figure(sampled, "+"),
            "-" if own else _figure(wins.get(reference)),
            "-" if name == "rule" else _figure(wins.get("rule")),
            _figure(policy.get("kl_to_reference")),
            f"{seconds:.0f}" if seconds is not None else "-",
            data,
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for point in evaluation.get("best_of_n", []):
        if point["n"] in (4, 16) and "rm_picked_gold" in point:
            cells = ["-", _figure(point["rm_picked_gold"]), "-", "-", "-", "-", f"{point['kl']:.3f}", "-", "-"]
            lines.append(f"| best-of-{point['n']} of {reference}, RM picks | " + " | ".join(cells) + " |")
    return lines


def stage_status(chain: Chain) -> dict[Step, str]:
    """Each finished step's standing: current, stale (an input changed since), or made outside the chain."""
    status = {}
    for step in chain.steps:
        if not (step.output / outputs.METRICS_FILE).is_file():
            continue
        if not (step.output / outputs.CHAIN_FILE).is_file():
            status[step] = "made outside the chain"
        elif all((folder / outputs.METRICS_FILE).is_file() for folder in step.inputs) and is_current(step):
            status[step] = "current"
        else:
            status[step] = "stale: an input changed since"
    return status


def _stage_table(status: dict[Step, str]) -> list[str]:
    lines = ["| stage | wall time | status | outputs |", "|---|---|---|---|"]
    for step, standing in status.items():
        seconds = _json(step.output / outputs.CHAIN_FILE).get("seconds")
        wall = f"{seconds:.0f} s" if seconds is not None else "-"
        lines.append(f"| {step.name} | {wall} | {standing} | `{step.output}` |")
    return lines


def _policy_names(evaluation_step: Step | None) -> dict[Path, str]:
    """Output folder -> the name the evaluation gives that policy (its `--policies NAME=DIR`)."""
    if evaluation_step is None:
        return {}
    pairs = [arg.partition("=") for arg in evaluation_step.argv if "=" in arg and not arg.startswith("-")]
    return {Path(folder): name for name, _, folder in pairs}


def _colors(names: list[str]) -> dict[str, str]:
    """One colour per policy in every figure (matplotlib's tab10, in the evaluation's order)."""
    return {name: f"C{i % 10}" for i, name in enumerate(dict.fromkeys(names))}


def write(chain: str | Chain) -> Path:
    """Write `report.md` and its figures into the chain's folder; return the report's path."""
    chain = chains.load(chain) if isinstance(chain, str) else chain
    run_dir, figures = chain.folder, chain.folder / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    status = stage_status(chain)
    current = [step for step, standing in status.items() if not standing.startswith("stale")]
    evaluation_step = next((step for step in reversed(chain.steps) if _stage(step) == "eval"), None)
    evaluation = _json(evaluation_step.output / outputs.METRICS_FILE) if evaluation_step else {}
    lines = [f"# RLHF demo report: {chain.name} chain, `{run_dir}`", ""]
    names = _policy_names(evaluation_step)
    made_by = {names[step.output]: step for step in chain.steps if step.output in names}
    headline = side_by_side(evaluation, made_by)
    if headline:
        lines += ["## Every method side by side", "", *headline, ""]
    lines += ["## Stages", "", *_stage_table(status)]
    runs = rl_runs(current, names)
    colors = _colors([*evaluation.get("names", evaluation.get("policies", [])), *runs])
    sections = (
        ("Training curves", training_curves(list(status), figures)),
        ("RL along the run (rollout batches)", rl_curves(runs, colors, figures)),
        ("Reward vs KL: the proxy and the gold score", reward_vs_kl(runs, evaluation, colors, figures)),
        ("Gold per task family", gold_by_family(evaluation, colors, figures)),
    )
    for title, figure in sections:
        if figure is not None:
            lines += ["", f"## {title}", "", f"![{title}]({figure})"]
    eval_report = evaluation_step.output / outputs.EVAL_REPORT_FILE if evaluation_step else None
    if eval_report is not None and eval_report.is_file():
        # The evaluation's own tables, one heading level down.
        body = eval_report.read_text().replace("\n## ", "\n### ").replace("# Evaluation", "## Evaluation", 1)
        lines += ["", body.rstrip()]
    partial = run_dir / (outputs.REPORT_FILE + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    return partial.replace(run_dir / outputs.REPORT_FILE)
