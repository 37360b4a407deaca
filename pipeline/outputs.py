"""Stage output folders: written under `<output_dir>.partial`, renamed into place when complete."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline import locks
from pipeline.errors import PipelineError

# The files a stage writes into its output folder (and the report into a run folder)
RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"  # one JSON object per logged training step
CHAIN_FILE = "chain.json"  # the demo chain's fingerprint and wall time of the stage
SANDBOX_SAMPLES_FILE = "sandbox_samples.jsonl"  # every gold-evaluated test response
PPO_SAMPLES_FILE = "ppo_samples.jsonl"  # PPO's and SFT's held-out responses side by side
EVAL_SAMPLES_FILE = "samples.jsonl"  # the eval stage's responses of every policy
EVAL_REPORT_FILE = "eval.md"
REPORT_FILE = "report.md"
PPO_STATE_FILE = "trainer_state.pt"  # in a PPO checkpoint (transformers' Trainer writes trainer_state.json)
logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Keys never written to a resolved recipe: they may hold credentials.
SECRET_KEYS = {"hub_token", "token"}


def partial_dir(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".partial")


def clean_recipe(stage: str, recipe: dict[str, Any]) -> dict[str, Any]:
    """The resolved recipe as written to the output folder: stage first, secrets removed."""
    return {"stage": stage, **{k: v for k, v in recipe.items() if k not in SECRET_KEYS}}


def _complete(checkpoint: Path) -> bool:
    """Whether a checkpoint holds its trainer state, the file both trainers write last.

    transformers' Trainer writes `checkpoint-N/` in place, so a kill while it saves leaves a folder
    with weights and no (or half a) `trainer_state.json`; PPO renames `tmp-checkpoint-N/` when done.
    """
    if (checkpoint / PPO_STATE_FILE).is_file():
        return True
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(work: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint in `work`, after removing unfinished ones."""
    found = []
    for folder in work.glob("*checkpoint-*"):
        match = _CHECKPOINT.match(folder.name)
        if match and _complete(folder):
            found.append((int(match.group(1)), folder))
        else:
            logger.warning("removing %s: a checkpoint whose writing was interrupted", folder)
            shutil.rmtree(folder, ignore_errors=True)
    return max(found) if found else None


def start(output_dir: str | Path, stage: str, recipe: dict[str, Any]) -> tuple[Path, bool]:
    """The work folder for a stage, and whether it holds an unfinished run of the same recipe to resume.

    The main process takes the folder's lock (`pipeline.locks`) and, under `accelerate launch`,
    prepares the folder before the other ranks look at it.
    """
    from accelerate import PartialState  # torch: only where a stage runs

    work = partial_dir(output_dir)
    resolved = clean_recipe(stage, recipe)
    previous = work / RECIPE_FILE
    state = PartialState()
    with state.main_process_first():
        try:
            if state.is_main_process:
                locks.acquire(output_dir)
            same_run = work.exists() and previous.exists() and yaml.safe_load(previous.read_text()) == resolved
            resume = same_run and last_checkpoint(work) is not None
            if state.is_main_process and work.exists() and not resume:
                why = "no complete checkpoint" if same_run else "another recipe"
                logger.info("%s holds an unfinished run (%s): starting again from nothing", work, why)
            if state.is_main_process and not resume:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                previous.write_text(yaml.safe_dump(resolved, sort_keys=False))
        except OSError as error:
            raise PipelineError(f"cannot write the output folder {output_dir}: {error.strerror or error}") from error
    return work, resume


def write_jsonl(path: str | Path, rows: list[dict]) -> None:
    """One JSON object per line."""
    with Path(path).open("w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def write_metrics(folder: str | Path, metrics: dict[str, Any]) -> None:
    """metrics.json, replaced atomically (a reader never sees half a file)."""
    partial = Path(folder, METRICS_FILE + ".partial")
    partial.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    partial.replace(Path(folder, METRICS_FILE))


def finish(work: Path, output_dir: str | Path) -> Path:
    """Drop the checkpoints and move the finished work folder to `output_dir`, replacing an old one."""
    for checkpoint in work.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    output_dir = Path(output_dir)
    if output_dir.exists():
        old = output_dir.with_name(output_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        output_dir.rename(old)
        work.rename(output_dir)
        shutil.rmtree(old)
    else:
        work.rename(output_dir)
    locks.release(output_dir)
    return output_dir
