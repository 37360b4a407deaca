"""`report.md` for a run folder: the stages' times and metrics, training curves, the reward-vs-KL picture,
per-family gold bars and sample responses, from what the stages wrote (no model is loaded)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from pipeline import outputs  # noqa: E402
from pipeline.chain import CHAIN_FILE  # noqa: E402
from pipeline.stages.eval import REPORT_FILE as EVAL_REPORT  # noqa: E402

REPORT_FILE = "report.md"
FIGURES = "figures"
STAGES = ("base", "sft", "comparisons", "rm", "ppo", "ppo_ptx", "eval")
PPO_RUNS = {"ppo": "PPO", "ppo_ptx": "PPO-ptx"}


def _log(folder: Path) -> list[dict]:
    path = folder / outputs.LOG_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _save(figure: plt.Figure, path: Path) -> str:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"{FIGURES}/{path.name}"


def training_curves(run_dir: Path, figures: Path) -> str | None:
    """Loss of base, SFT and RM by step, with the RM's training accuracy."""
    logs = {name: [r for r in _log(run_dir / name) if "loss" in r] for name in ("base", "sft", "rm")}
    if not any(logs.values()):
        return None
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (name, rows) in zip(axes, logs.items(), strict=True):
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], marker=".", label="training loss")
        if name == "rm" and rows and "accuracy" in rows[0]:
            ax.plot([r["step"] for r in rows], [r["accuracy"] for r in rows], marker=".", label="training accuracy")
        ax.set(title={"base": "Base pretraining", "sft": "SFT", "rm": "Reward model"}[name], xlabel="optimizer step")
        ax.set_ylabel("loss" if name != "rm" else "loss / pair accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, figures / "training_curves.png")


def ppo_curves(run_dir: Path, figures: Path) -> str | None:
    """RM score, KL, entropy and gold score of the rollouts, by episode."""
    logs = {label: _log(run_dir / name) for name, label in PPO_RUNS.items() if _log(run_dir / name)}
    if not logs:
        return None
    panels = [
        ("objective/scores", "RM score (raw)"),
        ("objective/kl", "KL to SFT (nats / response)"),
        ("objective/entropy", "entropy (nats / token)"),
        ("objective/gold", "gold score (sandbox judge)"),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        for label, rows in logs.items():
            ax.plot([r["episodes"] for r in rows if key in r], [r[key] for r in rows if key in r], label=label)
        ax.set(title=title, xlabel="episodes")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, figures / "ppo_training.png")


def reward_vs_kl(run_dir: Path, figures: Path) -> str | None:
    """Proxy (RM) and gold score against the KL spent, along each PPO run (Gao et al. 2022)."""
    logs = {label: _log(run_dir / name) for name, label in PPO_RUNS.items() if _log(run_dir / name)}
    if not logs:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (key, title) in zip(
        axes, (("objective/scores", "Proxy: reward-model score"), ("objective/gold", "Gold score")), strict=True
    ):
        for label, rows in logs.items():
            rows = [r for r in rows if key in r]
            ax.plot([max(r["objective/kl"], 0.0) ** 0.5 for r in rows], [r[key] for r in rows], marker=".", label=label)
        ax.set(title=title, xlabel="sqrt(KL to SFT), KL in nats per response", ylabel="mean over the rollout batch")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(figure, figures / "reward_vs_kl.png")


def gold_by_family(evaluation: dict, figures: Path) -> str | None:
    """Grouped bars: gold per task family for every evaluated policy."""
    policies = {n: p["gold_by_family"] for n, p in evaluation.get("policies", {}).items() if "gold_by_family" in p}
    if not policies:
        return None
    families = sorted(next(iter(policies.values())))
    width = 0.8 / len(policies)
    figure, ax = plt.subplots(figsize=(11, 4))
    for i, (name, by_family) in enumerate(policies.items()):
        xs = [j + (i - (len(policies) - 1) / 2) * width for j in range(len(families))]
        ax.bar(xs, [by_family[f] for f in families], width, label=name)
    ax.set_xticks(range(len(families)), families)
    ax.set(ylim=(0, 1.05), ylabel="mean gold score (greedy)", title="Gold score per task family, held-out prompts")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(ncols=len(policies), loc="lower right", fontsize="small")
    return _save(figure, figures / "gold_by_family.png")


def _stage_table(run_dir: Path) -> list[str]:
    lines = ["| stage | wall time | outputs |", "|---|---|---|"]
    for name in STAGES:
        if (run_dir / name / outputs.METRICS_FILE).is_file():
            seconds = _json(run_dir / name / CHAIN_FILE).get("seconds")
            wall = f"{seconds:.0f} s" if seconds is not None else "-"
            lines.append(f"| {name} | {wall} | `{run_dir / name}` |")
    return lines


def write(run_dir: str | Path) -> Path:
    """Write `report.md` and its figures into `run_dir`; return the report's path."""
    run_dir = Path(run_dir)
    figures = run_dir / FIGURES
    figures.mkdir(parents=True, exist_ok=True)
    evaluation = _json(run_dir / "eval" / outputs.METRICS_FILE)
    lines = [f"# RLHF demo report: `{run_dir}`", "", "## Stages", "", *_stage_table(run_dir)]
    sections = (
        ("Training curves", training_curves(run_dir, figures)),
        ("PPO along the run (rollout batches)", ppo_curves(run_dir, figures)),
        ("Reward vs KL: the proxy and the gold score", reward_vs_kl(run_dir, figures)),
        ("Gold per task family", gold_by_family(evaluation, figures)),
    )
    for title, figure in sections:
        if figure is not None:
            lines += ["", f"## {title}", "", f"![{title}]({figure})"]
    eval_report = run_dir / "eval" / EVAL_REPORT
    if eval_report.is_file():
        # The evaluation's own tables, one heading level down.
        body = eval_report.read_text().replace("\n## ", "\n### ").replace("# Evaluation", "## Evaluation", 1)
        lines += ["", body.rstrip()]
    partial = run_dir / (REPORT_FILE + ".partial")
    partial.write_text("\n".join(lines) + "\n")
    return partial.replace(run_dir / REPORT_FILE)
