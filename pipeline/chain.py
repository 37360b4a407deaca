"""The demo chain: stages run in order, each skipped when its output is current.

A stage's fingerprint hashes its command line, the recipe files it names and the `metrics.json` of
every output it reads, so an edited recipe or a rerun upstream stage reruns it and everything after
it. A finished stage records its fingerprint and wall time in `chain.json` beside its outputs; an
interrupted stage resumes from its last checkpoint when the chain runs again.
"""

from __future__ import annotations

import gc
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import outputs
from pipeline.errors import PipelineError
from pipeline.registry import STAGES

# Runs `python -m pipeline <argv>` in this process and returns its exit status (the CLI's main)
Runner = Callable[[list[str]], int]

RECIPES = Path("recipes/sandbox")


@dataclass(frozen=True)
class Step:
    """One stage of a chain: `python -m pipeline <argv>` writes `output` from the outputs in `inputs`."""

    name: str
    argv: tuple[str, ...]
    output: Path
    inputs: tuple[Path, ...] = ()
    # The metric the summary shows for this stage, and its label.
    key_metric: tuple[str, str] | None = None
    # Left out of the whole chain until asked for by name (`--until`); kept current once its output exists.
    optional: bool = False

    @property
    def in_whole_chain(self) -> bool:
        return not self.optional or (self.output / outputs.METRICS_FILE).is_file()


def demo_steps(run_dir: Path = Path("outputs/demo")) -> list[Step]:
    """base -> SFT -> comparisons -> RM -> PPO and PPO-ptx -> eval, as the demo recipes wire them.

    RLOO and GRPO (TRL's trainers on the same RM) are optional: `make rloo` / `make grpo` run them
    once; from then on the whole chain keeps them current and evaluates them with the others.
    """
    # Each stage's folder, and those of the chain's two other steps
    d = {name: run_dir / stage.folder for name, stage in STAGES.items()}
    d.update({"ppo-ptx": run_dir / "ppo_ptx", "eval": run_dir / "eval"})

    def recipe(stage: str, variant: str = "demo") -> tuple[str, ...]:
        return (stage, "--config", str(RECIPES / stage / f"config_{variant}.yaml"))

    evaluated = ["base", "sft", "ppo", "ppo-ptx"]
    evaluated += [name for name in ("rloo", "grpo") if (d[name] / outputs.METRICS_FILE).is_file()]
    policies = [f"{d[name].name}={d[name]}" for name in evaluated]  # named by their folders
    return [
        Step("base", recipe("base"), d["base"], (), ("eval_loss", "eval loss")),
        Step("sft", recipe("sft"), d["sft"], (d["base"],), ("gold_mean", "gold")),
        Step("label", recipe("label"), d["label"], (d["sft"],), ("train_pairs", "training pairs")),
        Step("rm", recipe("rm"), d["rm"], (d["sft"], d["label"]), ("accuracy_to_bayes", "accuracy / Bayes")),
        Step("ppo", recipe("ppo"), d["ppo"], (d["sft"], d["rm"]), ("gold_win_rate_vs_sft", "gold win vs SFT")),
        Step(
            "ppo-ptx",
            ("ppo", "--config", str(RECIPES / "ppo/config_ptx.yaml")),
            d["ppo-ptx"],
            (d["sft"], d["rm"]),
            ("gold_win_rate_vs_sft", "gold win vs SFT"),
        ),
        Step("rloo", recipe("rloo"), d["rloo"], (d["sft"], d["rm"]), ("gold_mean", "gold"), optional=True),
        Step("grpo", recipe("grpo"), d["grpo"], (d["sft"], d["rm"]), ("gold_mean", "gold"), optional=True),
        Step(
            "eval",
            ("eval", "--policies", *policies, "--reward_model", str(d["rm"]), "--output_dir", str(d["eval"])),
            d["eval"],
            (d["rm"], *(d[name] for name in evaluated)),
        ),
    ]


def needed_for(steps: list[Step], name: str) -> list[Step]:
    """The step called `name` and every step whose output it reads, directly or not, in chain order."""
    by_output = {step.output: step for step in steps}
    wanted = {step.output for step in steps if step.name == name}
    if not wanted:
        raise PipelineError(f"no stage {name!r} in the chain; it has {[step.name for step in steps]}")
    for step in reversed(steps):
        if step.output in wanted:
            wanted.update(folder for folder in step.inputs if folder in by_output)
    return [step for step in steps if step.output in wanted]


def fingerprint(step: Step) -> str:
    """A hash of what the step's output depends on: its arguments, recipe files and inputs' metrics."""
    digest = hashlib.sha256(json.dumps(step.argv).encode())
    for arg in step.argv:
        if arg.endswith((".yaml", ".yml")) and Path(arg).is_file():
            digest.update(Path(arg).read_bytes())
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
    return json.loads(path.read_text())


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
            shutil.rmtree(outputs.partial_dir(step.output), ignore_errors=True)
        print(f"== {step.name}: python -m pipeline {' '.join(step.argv)}", flush=True)
        seconds = run_step(step, run_stage)
        record = {"fingerprint": fingerprint(step), "seconds": seconds}
        (step.output / outputs.CHAIN_FILE).write_text(json.dumps(record, indent=2) + "\n")
        rows.append({"stage": step.name, "ran": True, **record})
    for step, row in zip(steps, rows, strict=True):
        metrics = json.loads((step.output / outputs.METRICS_FILE).read_text())
        if step.key_metric is not None:
            key, label = step.key_metric
            value = metrics.get(key)
            row["metric"] = f"{label} {value:.3f}" if isinstance(value, float) else f"{label} {value}"
    return rows


def print_summary(rows: list[dict], total_seconds: float) -> None:
    print(f"\n{'stage':<10}{'status':<10}{'wall':>10}  key metric")
    for row in rows:
        status = "ran" if row["ran"] else "skipped"
        print(f"{row['stage']:<10}{status:<10}{row['seconds']:>9.0f}s  {row.get('metric', '')}")
    print(f"{'total':<20}{total_seconds:>9.0f}s  (this run)")
