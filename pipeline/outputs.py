"""Stage output folders: written under `<output_dir>.partial`, renamed into place when complete."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from pipeline import locks, reading
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
INPUTS_FILE = "inputs.json"  # in a work folder: what its inputs held, so a resume reads the same
PPO_STATE_FILE = "trainer_state.pt"  # in a PPO checkpoint (transformers' Trainer writes trainer_state.json)
# Written into every folder a command creates to work in, and kept in the output it becomes: a folder a command
# may delete or replace (a `.partial` to start again, an `.old` left by an interrupted swap) must hold it
OWN_MARKER = ".made-by-pipeline"
logger = logging.getLogger(__name__)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Keys never written to a resolved recipe: they may hold credentials.
SECRET_KEYS = {"hub_token", "token"}


def partial_dir(output_dir: str | Path) -> Path:
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".partial")


def old_dir(output_dir: str | Path) -> Path:
    """Where `finish` moves a finished output aside while the new one takes its place."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".old")


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


def is_finished_output(folder: str | Path) -> bool:
    """Whether `folder` is a finished output of this pipeline: its resolved recipe, naming a stage, and metrics."""
    folder = Path(folder)
    try:
        recipe = reading.read_yaml(folder / RECIPE_FILE)
    except PipelineError:
        return False
    return isinstance(recipe, dict) and "stage" in recipe and (folder / METRICS_FILE).is_file()


def read_recipe_file(folder: str | Path) -> dict[str, Any]:
    """The resolved recipe a stage wrote to its output folder; {} when it has none (a Hub model)."""
    path = Path(folder) / RECIPE_FILE
    recipe = reading.read_yaml(path) if path.is_file() else {}
    if not isinstance(recipe, dict):
        raise PipelineError(f"{path}: not a recipe (a mapping of key: value)")
    return recipe


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """The `metrics.json` of an output folder; {} when it has none."""
    path = Path(folder) / METRICS_FILE
    return reading.read_json_object(path) if path.is_file() else {}


def make_own(folder: Path) -> Path:
    """Create `folder` (or take an empty one) with the marker that lets a later run delete it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / OWN_MARKER).write_text("made by this pipeline, which may delete or replace this folder\n")
    return folder


def remove_own(folder: Path) -> None:
    """Delete a folder this pipeline made (its marker, or a finished output of a version before the marker);
    anything else in the way is kept and refused in one line."""
    if not folder.exists() and not folder.is_symlink():
        return
    check_own(folder)
    # Renamed first: a deletion cut short leaves a name no run looks at, not a folder without its marker
    trash = folder.with_name(f"{folder.name}.deleting-{os.getpid()}")
    folder.rename(trash)
    shutil.rmtree(trash)


def check_own(folder: Path) -> None:
    """Refuse, in one line, a folder in the way that this pipeline did not make (an empty one is nobody's)."""
    if not folder.exists() and not folder.is_symlink():
        return
    own = folder.is_dir() and not folder.is_symlink()
    marked = own and ((folder / OWN_MARKER).is_file() or is_finished_output(folder) or not any(folder.iterdir()))
    if not marked:
        raise PipelineError(
            f"{folder} is in the way and was not made by this pipeline (no {OWN_MARKER} in it, which the unfinished "
            "runs of versions before 2026-12-07 lack too): it is kept; move it away, or name another output_dir"
        )


def discard_unfinished(output_dir: str | Path) -> None:
    """Delete the unfinished run in `<output_dir>.partial`, so that the next one starts from nothing: only once
    the folder's lock shows no live run writing it, and only a folder this pipeline made."""
    locks.acquire(output_dir)
    try:
        remove_own(partial_dir(output_dir))
    finally:
        locks.release(output_dir)


def input_digests(paths: list[Path]) -> dict[str, str]:
    """What each input holds, to tell whether an unfinished run read the same: a file's sha256; a folder's
    `metrics.json` (a stage output; a rerun stage writes a new one), else its files' names and sizes."""
    digests = {}
    for path in paths:
        digest = hashlib.sha256()
        if path.is_file():
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        elif (path / METRICS_FILE).is_file():
            digest.update((path / METRICS_FILE).read_bytes())
        else:
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(path)}:{file.stat().st_size}\n".encode())
        digests[str(path)] = digest.hexdigest()
    return digests


def check_not_inputs(output_dir: str | Path, inputs: list[Path]) -> None:
    """Refuse an output folder equal to, inside or containing one of the run's inputs."""
    target = Path(output_dir).resolve()
    for source in inputs:
        source = source.resolve()
        if target == source or source in target.parents or target in source.parents:
            relation = "is" if target == source else "is inside" if source in target.parents else "contains"
            raise PipelineError(f"output_dir {output_dir} {relation} the run's input {source}: name another folder")


def check_output_dir(output_dir: str | Path, inputs: list[Path]) -> None:
    """Refuse, before any work, an output folder that is not the run's own to write (one `PipelineError` line).

    Refused: a symbolic link; an existing file; the working directory or a folder above it; a folder that holds a
    repository; a folder equal to, inside or containing one of the run's inputs; an existing folder
    with contents that is not a finished output of this pipeline.
    """
    target = Path(output_dir).resolve()
    where = f"output_dir {output_dir}"
    if Path(output_dir).is_symlink():
        raise PipelineError(f"{where} is a symbolic link (to {target}): name the folder itself")
    if target.exists() and not target.is_dir():
        raise PipelineError(f"{where} is an existing file: name a folder for the run's output")
    here = Path.cwd().resolve()
    if target == here or target in here.parents:
        raise PipelineError(f"{where} is the working directory or a folder above it: name a folder of its own")
    check_not_inputs(output_dir, inputs)
    check_own(old_dir(output_dir))  # the swap at the end would move it aside: refused now, not after the training
    if not target.is_dir():
        return
    if (target / ".git").exists() or next(target.glob("*/.git"), None) is not None:
        raise PipelineError(f"{where} holds a git repository: name a folder of its own")
    if is_finished_output(target) or not any(target.iterdir()):
        return
    raise PipelineError(
        f"{where} holds files that are not a finished output of this pipeline (no {RECIPE_FILE} and "
        f"{METRICS_FILE}): they are kept; name another folder, or empty this one"
    )


def start(output_dir: str | Path, stage: str, recipe: dict[str, Any], inputs: list[Path]) -> tuple[Path, bool]:
    """The work folder for a stage, and whether it holds an unfinished run of the same recipe and `inputs`
    (`pipeline.inputs.recipe_paths`) to resume.

    First the folder must be the run's own (`check_output_dir`). The main process takes the folder's lock
    (`pipeline.locks`) and, under `accelerate launch`, prepares the folder before the other ranks look at it.
    """
    from accelerate import PartialState  # torch: only where a stage runs

    check_output_dir(output_dir, inputs)
    work = partial_dir(output_dir)
    resolved = clean_recipe(stage, recipe)
    previous, read = work / RECIPE_FILE, work / INPUTS_FILE
    digests = input_digests(inputs)
    state = PartialState()
    with state.main_process_first():
        try:
            if state.is_main_process:
                locks.acquire(output_dir)
            same_recipe = work.exists() and previous.exists() and yaml.safe_load(previous.read_text()) == resolved
            same_inputs = read.is_file() and json.loads(read.read_text()) == digests
            resume = same_recipe and same_inputs and last_checkpoint(work) is not None
            if state.is_main_process and work.exists() and not resume:
                why = (
                    "another recipe"
                    if not same_recipe
                    else "its inputs changed since"
                    if not same_inputs
                    else "no complete checkpoint"
                )
                logger.info("%s holds an unfinished run (%s): starting again from nothing", work, why)
            if state.is_main_process and not resume:
                remove_own(work)
                make_own(work)
                previous.write_text(yaml.safe_dump(resolved, sort_keys=False))
                read.write_text(json.dumps(digests, indent=2) + "\n")
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
    """Drop the checkpoints and move the finished work folder to `output_dir`, replacing an old one only when
    that is a finished output of this pipeline: anything else there is kept, and so is the work folder."""
    output_dir = Path(output_dir)
    occupied = output_dir.exists() and not (output_dir.is_dir() and not any(output_dir.iterdir()))
    if occupied and not is_finished_output(output_dir):
        raise PipelineError(
            f"{output_dir} appeared during the run and is not a finished output of this pipeline: it is kept, "
            f"and the run's output is in {work}"
        )
    old = old_dir(output_dir)
    try:
        check_own(old)
    except PipelineError as error:
        raise PipelineError(f"{error}; the run's output is in {work}") from None
    for checkpoint in work.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)
    if occupied:
        remove_own(old)  # an earlier swap's, interrupted
    if output_dir.is_dir() and not any(output_dir.iterdir()):
        output_dir.rmdir()
    if output_dir.exists():
        output_dir.rename(old)
        work.rename(output_dir)
        shutil.rmtree(old)
    else:
        work.rename(output_dir)
    locks.release(output_dir)
    return output_dir
