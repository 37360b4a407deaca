"""Inspect a data card: load one split in its canonical format and report what was kept and dropped."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from pipeline import outputs
from pipeline.data import load_card
from pipeline.errors import PipelineError
from pipeline.inputs import recipe_paths


def _check_own_folder(folder: Path, inputs: list[Path]) -> None:
    """Refuse a folder that is not `data`'s own to write splits into: none yet, an empty one, or one an earlier
    `data` made (its marker); never around the inputs."""
    outputs.check_not_inputs(folder, inputs)
    # A stage's output or work folder carries the marker too, and is not `data`'s to write into
    ours = (folder / outputs.OWN_MARKER).is_file() and not (folder / outputs.RECIPE_FILE).exists()
    if folder.exists() and not ours and (not folder.is_dir() or any(folder.iterdir())):
        raise PipelineError(
            f"output_dir {folder} holds files that `data` did not write: they are kept; name another folder"
        )


def run(
    card: str,
    split: str = "train",
    data_files: str | None = None,
    max_rows: int | None = None,
    output_dir: str | None = None,
) -> dict:
    """The load report and first example as one JSON object; the rows as JSONL in `output_dir` when given."""
    if output_dir:
        _check_own_folder(Path(output_dir), [Path(card), *recipe_paths({"data_files": data_files})])
    dataset, report = load_card(card, split, data_files, max_rows)
    summary = {**asdict(report), "columns": dataset.column_names, "first_example": dataset[0]}
    if output_dir:
        target = outputs.make_own(Path(output_dir)) / f"{split}.jsonl"
        partial = target.with_name(target.name + ".partial")
        dataset.to_json(partial, lines=True)
        partial.rename(target)
        summary["written"] = str(target)
    print(json.dumps(summary, ensure_ascii=False))
    return summary
