"""Inspect a data card: load one split in its canonical format and report what was kept and dropped."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pipeline.data import load_card


def run(
    card: str,
    split: str = "train",
    data_files: str | None = None,
    max_rows: int | None = None,
    output_dir: str | None = None,
) -> dict:
    """The load report and first example as one JSON object; the rows as JSONL in `output_dir` when given."""
    dataset, report = load_card(card, split, data_files, max_rows)
    summary = {**asdict(report), "columns": dataset.column_names, "first_example": dataset[0]}
    if output_dir:
        target = Path(output_dir, f"{split}.jsonl")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        dataset.to_json(partial, lines=True)
        partial.rename(target)
        summary["written"] = str(target)
    print(json.dumps(summary, ensure_ascii=False))
    return summary
