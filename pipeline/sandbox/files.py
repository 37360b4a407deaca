"""The sandbox's generated data folder: every file made deterministically, written atomically."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.outputs import write_jsonl
from pipeline.sandbox.comparisons import static_comparisons, style_comparisons
from pipeline.sandbox.corpus import (
    PRETRAIN_DOCUMENTS,
    PRETRAIN_VALIDATION_DOCUMENTS,
    SFT_PER_FAMILY,
    VALIDATION_PER_FAMILY,
    demonstrations,
    pretraining_documents,
    prompt_rows,
)
from pipeline.sandbox.labelers import Labeler

# Bump when the generated data change, so stale folders are regenerated.
DATA_VERSION = "4"
STATIC_K = 4


def sandbox_files() -> dict[str, Callable[[], list[dict]]]:
    """File name -> a function that makes its rows."""
    return {
        "pretrain_train.jsonl": lambda: pretraining_documents(PRETRAIN_DOCUMENTS),
        "pretrain_validation.jsonl": lambda: pretraining_documents(PRETRAIN_VALIDATION_DOCUMENTS, ("validation",)),
        "sft_train.jsonl": lambda: demonstrations("sft", SFT_PER_FAMILY),
        "sft_validation.jsonl": lambda: demonstrations("validation", VALIDATION_PER_FAMILY),
        "comparisons_static_train.jsonl": lambda: static_comparisons("comparison", STATIC_K, Labeler(seed=1)),
        "comparisons_static_test.jsonl": lambda: static_comparisons("validation", STATIC_K, Labeler(seed=2)),
        "comparisons_style_train.jsonl": lambda: style_comparisons("comparison"),
        "comparisons_style_test.jsonl": lambda: style_comparisons("validation"),
        **{
            f"prompts_{split}.jsonl": (lambda s=split: prompt_rows(s))
            for split in ("comparison", "ppo", "validation", "test")
        },
    }


def ensure_sandbox_data(folder: str | os.PathLike) -> Path:
    """Generate the sandbox data into `folder` unless an up-to-date copy is there; returns the folder.

    An older version's files are replaced one by one (the stamp last), and anything else in the folder is
    kept; a folder the sandbox did not make (files, no stamp) is refused, never emptied.
    """
    folder = Path(folder)
    stamp = folder / "VERSION"
    if stamp.exists() and stamp.read_text().strip() == DATA_VERSION:
        return folder
    if folder.is_dir() and any(folder.iterdir()) and not stamp.exists():
        raise PipelineError(
            f"{folder} holds files the sandbox did not make (it has no VERSION file): give the card's "
            "generated files a folder of their own"
        )
    partial = folder.with_name(folder.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # this process's own, left by an earlier one with its pid
    partial.mkdir(parents=True)
    for name, make in sandbox_files().items():
        write_jsonl(partial / name, make())
    (partial / "VERSION").write_text(DATA_VERSION + "\n")
    try:
        partial.rename(folder)  # a new (or empty) folder: whole at once
        return folder
    except OSError:
        pass  # an older version's folder, or one another process has just completed
    for name in [*sandbox_files(), "VERSION"]:
        os.replace(partial / name, folder / name)
    partial.rmdir()
    return folder
