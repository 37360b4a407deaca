"""A table of the stages found under a run folder (e.g. outputs/demo): wall time and key metrics."""

from __future__ import annotations

import json
from pathlib import Path

COLUMNS = (
    "train_runtime",
    "train_loss",
    "eval_loss",
    "gold_mean",
    "eval_accuracy",
    "spearman_gold",
    "gold_win_rate_vs_sft",
)


def run(run_dir: str) -> list[dict]:
    """Print one row per stage folder that holds a metrics.json, in the chain's order."""
    order = ["base", "sft", "comparisons", "rm", "ppo", "ppo_ptx"]
    rank = {name: i for i, name in enumerate(order)}
    folders = sorted(Path(run_dir).glob("*/metrics.json"), key=lambda p: (rank.get(p.parent.name, len(order)), p))
    if not folders:
        print(f"no finished stage under {run_dir}")
        return []
    rows = [{"stage": p.parent.name, **json.loads(p.read_text())} for p in folders]
    print(f"{'stage':<12}" + "".join(f"{c:>17}" for c in COLUMNS))
    for row in rows:
        cells = (f"{row[c]:>17.3f}" if isinstance(row.get(c), (int, float)) else f"{'-':>17}" for c in COLUMNS)
        print(f"{row['stage']:<12}" + "".join(cells))
    print(f"outputs: {Path(run_dir).resolve()}")
    return rows
