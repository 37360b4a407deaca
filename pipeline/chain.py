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

HH_RLHF_FILE = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"  # the one hh-rlhf file this workplace has

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


def demo_steps(run_dir: Path = Path("outputs/demo")) -> list[Step]:
    """base -> SFT -> comparisons -> RM -> PPO and PPO-ptx -> eval, as the demo recipes wire them.

    RLOO and GRPO (TRL's trainers on the same RM) are optional: `make rloo` / `make grpo` run them
    once; from then on the whole chain keeps them current and evaluates them with the others.
    """
    d = _folders(run_dir)
    recipes = Path("recipes/sandbox")
    steps = [
        Step("base", _recipe(recipes, "base"), d["base"], (), ("eval_loss", "eval loss")),
        Step("sft", _recipe(recipes, "sft"), d["sft"], (d["base"],), ("gold_mean", "gold")),
    ]
    return steps + _after_sft(recipes, d, d["sft"], ["base", "sft", "ppo", "ppo-ptx"], ptx_optional=False)


def smollm2_steps(run_dir: Path) -> list[Step]:
    """The sandbox world on SmolLM2-135M-Instruct: import -> LoRA SFT -> merge -> comparisons -> LoRA RM
    -> LoRA PPO -> eval (recipes/smollm2-135m/); PPO-ptx is an optional step."""
    d = _folders(run_dir)
    recipes = Path("recipes/smollm2-135m")
    merged = run_dir / "sft_merged"
    steps = _import_sft_merge(d["base"], _recipe(recipes, "sft"), d["sft"], merged, ("gold_mean", "gold"))
    # 100 held-out prompts, answers of up to 24 tokens: greedy, 4 sampled (SFT: 16, for best-of-n)
    eval_options = ("--num_prompts", "100", "--max_new_tokens", "24", "--batch_size", "50")
    eval_options += ("--num_samples", "4", "--best_of_n", "16")
    return steps + _after_sft(
        recipes, d, merged, ["sft", "ppo"], ptx_optional=True, trl_online_rl=False, eval_options=eval_options
    )


def smollm2_hh_steps(run_dir: Path) -> list[Step]:
    """Real human preferences on SmolLM2-135M-Instruct: import -> LoRA SFT on hh-rlhf's chosen responses
    -> merge -> LoRA RM on hh-rlhf pairs -> LoRA PPO on hh-rlhf prompts -> eval (the RM judges; samples
    side by side), from the local hh-rlhf file, recipes/smollm2-135m/*/config_hh_rlhf.yaml."""
    d = _folders(run_dir)
    recipes = Path("recipes/smollm2-135m")
    base, merged = Path("outputs/smollm2/base"), run_dir / "sft_merged"
    held_out = ("--prompts_card", "data_cards/hh_rlhf.md", "--data_files", HH_RLHF_FILE, "--split", "train[2000:]")
    evaluate = ("eval", "--policies", f"sft={merged}", f"ppo={d['ppo']}", "--reward_model", str(d["rm"]))
    evaluate += (*held_out, "--num_prompts", "32", "--max_new_tokens", "48", "--batch_size", "16", "--num_samples", "1")
    sft = _recipe(recipes, "sft", "hh_rlhf")
    return [
        *_import_sft_merge(base, sft, d["sft"], merged, ("train_loss", "train loss")),
        Step("rm", _recipe(recipes, "rm", "hh_rlhf"), d["rm"], (merged,), ("eval_accuracy", "held-out accuracy")),
        Step(
            "ppo",
            _recipe(recipes, "ppo", "hh_rlhf"),
            d["ppo"],
            (merged, d["rm"]),
            ("eval.policies.ppo.rm_score.mean", "RM score"),
        ),
        Step("eval", (*evaluate, "--output_dir", str(d["eval"])), d["eval"], (d["rm"], merged, d["ppo"])),
    ]


@dataclass(frozen=True)
class Chain:
    folder: Path  # where its stages write by default
    steps: Callable[[Path], list[Step]]


# The chains `python -m pipeline demo --chain NAME` runs
CHAINS = {
    "sandbox": Chain(Path("outputs/demo"), demo_steps),
    "smollm2": Chain(Path("outputs/smollm2"), smollm2_steps),
    "smollm2-hh": Chain(Path("outputs/smollm2-hh"), smollm2_hh_steps),
}


def steps_for(run_dir: Path) -> list[Step]:
    """The steps of the chain whose default folder has `run_dir`'s name (the sandbox demo's for any other)."""
    for chain in CHAINS.values():
        if chain.folder.name == run_dir.name:
            return chain.steps(run_dir)
    return demo_steps(run_dir)


def _import_sft_merge(
    base: Path, sft_argv: tuple[str, ...], sft: Path, merged: Path, sft_metric: tuple[str, str]
) -> list[Step]:
    """The shipped SmolLM2 imported into `base`, LoRA SFT on it into `sft`, the adapter merged into `merged`."""
    return [
        Step("import", ("import-gguf", "--output_dir", str(base)), base, (), ("parameters", "parameters")),
        Step("sft", sft_argv, sft, (base,), sft_metric),
        Step("merge", ("merge", str(sft), "--output_dir", str(merged)), merged, (sft,)),
    ]


def _folders(run_dir: Path) -> dict[str, Path]:
    """Each stage's folder, and those of the chains' other steps."""
    d = {name: run_dir / stage.folder for name, stage in STAGES.items()}
    d.update({"ppo-ptx": run_dir / "ppo_ptx", "eval": run_dir / "eval"})
    return d


def _recipe(recipes: Path, stage: str, variant: str = "demo") -> tuple[str, ...]:
    return (stage, "--config", str(recipes / stage / f"config_{variant}.yaml"))


def _after_sft(
    recipes: Path,
    d: dict[str, Path],
    sft: Path,
    evaluated: list[str],
    ptx_optional: bool,
    trl_online_rl: bool = True,
    eval_options: tuple[str, ...] = (),
) -> list[Step]:
    """label -> RM -> PPO, PPO-ptx (RLOO, GRPO) -> eval of `evaluated` and of the optional steps already run."""
    online = ("rloo", "grpo") if trl_online_rl else ()
    evaluated = evaluated + [name for name in ("ppo-ptx", *online) if name not in evaluated and _done(d[name])]
    policies = [f"{d[name].name}={sft if name == 'sft' else d[name]}" for name in evaluated]  # named by their folders
    rl = (sft, d["rm"])
    return [
        Step("label", _recipe(recipes, "label"), d["label"], (sft,), ("train_pairs", "training pairs")),
        Step("rm", _recipe(recipes, "rm"), d["rm"], (sft, d["label"]), ("accuracy_to_bayes", "accuracy / Bayes")),
        Step("ppo", _recipe(recipes, "ppo"), d["ppo"], rl, ("eval.gold_win_rate.ppo.sft.mean", "gold win vs SFT")),
        Step(
            "ppo-ptx",
            ("ppo", "--config", str(recipes / "ppo/config_ptx.yaml")),
            d["ppo-ptx"],
            rl,
            ("eval.gold_win_rate.ppo.sft.mean", "gold win vs SFT"),
            optional=ptx_optional,
        ),
        *(Step(name, _recipe(recipes, name), d[name], rl, ("gold_mean", "gold"), optional=True) for name in online),
        Step(
            "eval",
            (
                "eval",
                "--policies",
                *policies,
                "--reward_model",
                str(d["rm"]),
                "--output_dir",
                str(d["eval"]),
                *eval_options,
            ),
            d["eval"],
            (d["rm"], *(sft if name == "sft" else d[name] for name in evaluated)),
        ),
    ]


def _done(folder: Path) -> bool:
    return (folder / outputs.METRICS_FILE).is_file()


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
