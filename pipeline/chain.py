"""Demo chains: stages run in order, each skipped when its output is current.

A chain is data, `recipes/<world>/chain*.yaml`: its steps in order, each a recipe or a command. What a
step writes and reads comes from its recipe (`output_dir`, the `*_path` keys, its data cards' files)
or its command's arguments, so each folder is named once.

A stage's fingerprint hashes its command line, the recipe files it names (and the files those name)
and the `metrics.json` of every output it reads, so an edited recipe, card or chat template or a
rerun upstream stage reruns it and everything after it. A finished stage records its fingerprint and
wall time in `chain.json` beside its outputs; an interrupted stage resumes from its last checkpoint
when the chain runs again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from string import Formatter

from pipeline import outputs, reading
from pipeline.errors import PipelineError

# Runs `python -m pipeline <argv>` in this process and returns its exit status (the CLI's main)
Runner = Callable[[list[str]], int]


@dataclass(frozen=True)
class Step:
    """One stage of a chain: `python -m pipeline <argv>` writes `output` from the outputs in `inputs`."""

    name: str
    argv: tuple[str, ...]
    output: Path
    inputs: tuple[Path, ...] = ()
    # The metric the summary shows for this stage (a dotted path into metrics.json), and its label.
    key_metric: tuple[str, str] | None = None
    # Left out of the whole chain until asked for by name (`--until`); kept current once its output exists.
    optional: bool = False

    @property
    def in_whole_chain(self) -> bool:
        return not self.optional or (self.output / outputs.METRICS_FILE).is_file()


@dataclass(frozen=True)
class Chain:
    name: str
    folder: Path  # where report.md and its figures go
    steps: list[Step]


def _spec(path: Path) -> dict:
    """A chain file's mapping, with the keys every chain has."""
    spec = reading.read_yaml(path)
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("folder"), str):
        raise PipelineError(f"{path}: a chain is a mapping with a text name and folder, and its steps")
    steps = spec.get("steps")
    if not isinstance(steps, list) or not all(isinstance(entry, dict) for entry in steps):
        raise PipelineError(f"{path}: steps must be a list of steps, each a mapping with a recipe or a command")
    for number, entry in enumerate(steps, 1):
        if not isinstance(entry.get("recipe"), str) and not isinstance(entry.get("command"), list):
            raise PipelineError(f"{path}: step {number} needs a recipe (a file) or a command (a list)")
    return spec


def chain_files() -> tuple[dict[str, Path], list[str]]:
    """Every chain `python -m pipeline demo --chain NAME` can run, by name (`recipes/<world>/chain*.yaml`), and
    why each file that is not a chain is not."""
    files, broken = {}, []
    for path in sorted(Path("recipes").glob("*/chain*.yaml")):
        try:
            files[_spec(path)["name"]] = path
        except PipelineError as error:
            broken.append(str(error))
    return files, broken


def load(name: str) -> Chain:
    """The chain called `name` (its file's `name` key)."""
    files, broken = chain_files()
    if name not in files:
        unread = f"; unreadable: {broken[0]}" if broken else ""
        raise PipelineError(f"no chain {name!r}; the chains are {', '.join(files)} (recipes/*/chain*.yaml){unread}")
    return read(files[name])


def read(path: Path) -> Chain:
    """A chain file's steps, in order, each with the outputs of earlier steps that it reads.

    A step is a recipe (relative to the chain file; its stage is the recipe's folder, its output the
    recipe's `output_dir`) or a command, whose `{step}` arguments stand for that step's output and
    whose output is its `--output_dir`. `policies` (label -> step) adds `--policies label=output` for
    each of those steps, an optional one only once it has run.
    """
    spec = _spec(path)
    made: dict[str, Path] = {}
    steps = []
    for entry in spec["steps"]:
        if "recipe" in entry:
            recipe_path = path.parent / entry["recipe"]
            recipe = reading.read_yaml(recipe_path)
            if not isinstance(recipe, dict) or not isinstance(recipe.get("output_dir"), str):
                raise PipelineError(f"{recipe_path}: a chain's recipe names its output_dir")
            stage = entry.get("stage", recipe_path.parent.name)
            argv = (stage, "--config", str(recipe_path))
            output, inputs = Path(recipe["output_dir"]), _recipe_inputs(recipe, made.values())
        else:
            references = [field for arg in entry["command"] for _, field, _, _ in Formatter().parse(str(arg)) if field]
            unknown = [name for name in [*references, *entry.get("policies", {}).values()] if name not in made]
            if unknown:
                raise PipelineError(f"{path}: {entry['command'][0]} names {unknown[0]!r}, no earlier step")
            if "--output_dir" not in entry["command"]:
                raise PipelineError(f"{path}: the {entry['command'][0]} step needs --output_dir, its output")
            argv = tuple(str(arg).format(**made) for arg in entry["command"])
            inputs = list(dict.fromkeys(made[name] for name in references))
            policies = {
                label: made[step] for label, step in entry.get("policies", {}).items() if _done_or_required(step, steps)
            }
            if policies:
                argv = (argv[0], "--policies", *(f"{label}={folder}" for label, folder in policies.items()), *argv[1:])
                inputs += [folder for folder in policies.values() if folder not in inputs]
            output = Path(argv[argv.index("--output_dir") + 1])
        name = entry.get("name", argv[0])
        metric = tuple(entry["metric"]) if "metric" in entry else None
        steps.append(Step(name, argv, output, tuple(inputs), metric, entry.get("optional", False)))
        made[name] = output
    return Chain(spec["name"], Path(spec["folder"]), steps)


def _done_or_required(name: str, steps: list[Step]) -> bool:
    return next(step for step in steps if step.name == name).in_whole_chain


def _recipe_inputs(recipe: dict, made: Iterable[Path]) -> list[Path]:
    """The earlier outputs a recipe reads: through its `*_path` and `data_files` keys and its data cards' files."""
    from pipeline.data.cards import read_card  # not for `--help`: it loads the datasets library

    named = [
        Path(value)
        for key, values in recipe.items()
        if key.endswith("_path") or key == "data_files"
        for value in (values if isinstance(values, list) else [values])
        if isinstance(value, str)
    ]
    for key in (k for k in recipe if k.endswith("_card") and recipe[k]):
        named += [Path(file) for file in read_card(recipe[key]).local.values()]
    return [folder for folder in made if any(path.is_relative_to(folder) for path in named)]


def needs(recipe_path: str | Path, steps: list[Step]) -> list[Step]:
    """The steps that make what a recipe reads, and the steps those need, in chain order."""
    from pipeline.configs import read_recipe  # not for `--help`: it loads transformers

    wanted = set(_recipe_inputs(read_recipe(recipe_path), [step.output for step in steps]))
    return _with_inputs(steps, wanted)


def chain_for(recipe_path: str | Path) -> Chain:
    """The chain whose steps make what a recipe reads (the sandbox's when none does)."""
    for name in chain_files()[0]:
        found = load(name)
        if needs(recipe_path, found.steps):
            return found
    return load("sandbox")


def needed_for(steps: list[Step], name: str) -> list[Step]:
    """The step called `name` and every step whose output it reads, directly or not, in chain order."""
    wanted = {step.output for step in steps if step.name == name}
    if not wanted:
        raise PipelineError(f"no stage {name!r} in the chain; it has {[step.name for step in steps]}")
    return _with_inputs(steps, wanted)


def _with_inputs(steps: list[Step], wanted: set[Path]) -> list[Step]:
    by_output = {step.output: step for step in steps}
    for step in reversed(steps):
        if step.output in wanted:
            wanted.update(folder for folder in step.inputs if folder in by_output)
    return [step for step in steps if step.output in wanted]


def fingerprint(step: Step) -> str:
    """A hash of what the step's output depends on: its arguments, recipe files (and the files they name, a
    data card and its data files, a chat template) and inputs' metrics."""
    from pipeline.inputs import recipe_paths  # not for `--help`: it loads datasets

    digest = hashlib.sha256(json.dumps(step.argv).encode())
    for arg in step.argv:
        if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
            text = Path(arg).read_bytes()
            digest.update(text)
            try:
                recipe = reading.parse_yaml(text.decode("utf-8"), arg)
            except (UnicodeDecodeError, PipelineError):
                continue  # the stage itself will say what is wrong with it
            if isinstance(recipe, dict):
                for path in sorted({path for path in recipe_paths(recipe) if path.is_file()}):
                    digest.update(path.read_bytes())
    for folder in step.inputs:
        metrics = folder / outputs.METRICS_FILE
        if not metrics.is_file():
            raise PipelineError(f"stage {step.name} needs {folder}, which has no {outputs.METRICS_FILE}")
        digest.update(str(folder).encode() + metrics.read_bytes())
    return digest.hexdigest()


def recorded(step: Step) -> dict:
    """What the last finished run of this step wrote to chain.json ({} when none)."""
    path = step.output / outputs.CHAIN_FILE
    if not (step.output / outputs.METRICS_FILE).is_file() or not path.is_file():
        return {}
    return reading.read_json_object(path)


def is_current(step: Step) -> bool:
    record = recorded(step)
    return bool(record) and record.get("fingerprint") == fingerprint(step)


def run_step(step: Step, run: Runner) -> float:
    """Run one stage as `python -m pipeline <argv>` would; its wall time in seconds.

    In this process, not a new one: importing torch, transformers and TRL costs ~9 s per process here.
    """
    started = time.monotonic()
    code = run(list(step.argv))
    gc.collect()
    if code != 0:
        raise PipelineError(f"stage {step.name} failed (exit code {code}); run the chain again to continue from it")
    seconds = time.monotonic() - started
    if not (step.output / outputs.METRICS_FILE).is_file():
        raise PipelineError(f"stage {step.name} ended without writing {step.output / outputs.METRICS_FILE}")
    return seconds


def run(steps: list[Step], run_stage: Runner, force: bool = False) -> list[dict]:
    """Run the steps that are not current (all of them with `force`) with `run_stage`; one summary row per step."""
    rows = []
    for step in steps:
        if not force and is_current(step):
            rows.append({"stage": step.name, "ran": False, **recorded(step)})
            print(f"== {step.name}: up to date ({step.output}), skipped", flush=True)
            continue
        if force:
            outputs.discard_unfinished(step.output)
        print(f"== {step.name}: python -m pipeline {' '.join(step.argv)}", flush=True)
        seconds = run_step(step, run_stage)
        record = {"fingerprint": fingerprint(step), "seconds": seconds}
        (step.output / outputs.CHAIN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        rows.append({"stage": step.name, "ran": True, **record})
    for step, row in zip(steps, rows, strict=True):
        metrics = reading.read_json_object(step.output / outputs.METRICS_FILE)
        if step.key_metric is not None:
            key, label = step.key_metric
            value = metrics
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            row["metric"] = f"{label} {value:.3f}" if isinstance(value, float) else f"{label} {value}"
    return rows


def print_summary(rows: list[dict], total_seconds: float) -> None:
    print(f"\n{'stage':<10}{'status':<10}{'wall':>10}  key metric")
    for row in rows:
        status = "ran" if row["ran"] else "skipped"
        print(f"{row['stage']:<10}{status:<10}{row['seconds']:>9.0f}s  {row.get('metric', '')}")
    print(f"{'total':<20}{total_seconds:>9.0f}s  (this run)")
