"""One side of a benchmark comparison, run in a fresh process: `python -m scripts.bench.sides SPEC.json`.

A spec names the side and its inputs; the side writes what it measured to the spec's `result` path.
Times are of training alone (a Trainer's `train_runtime`, or the PPO loop's wall time): loading the
models and the data, and evaluating afterwards, are startup and are left out.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

Spec = dict[str, Any]
SIDES: dict[str, Callable[[Spec], dict]] = {}


def side(name: str) -> Callable:
    def register(fn: Callable[[Spec], dict]) -> Callable[[Spec], dict]:
        SIDES[name] = fn
        return fn

    return register


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def stage_argv(stage: str, spec: Spec, output_dir: Path) -> list[str]:
    args = [stage, "--config", spec["recipe"], "--output_dir", str(output_dir)]
    for key, value in spec["overrides"].items():
        args += [f"--{key}", "null" if value is None else str(value)]
    return args


def recipe_configs(stage: str, spec: Spec) -> tuple:
    """The config dataclasses our stage would build from the spec's recipe and overrides."""
    from pipeline.configs import load_configs
    from pipeline.registry import STAGES

    overrides = stage_argv(stage, spec, Path(spec["work"]) / "trl")[3:]
    configs, _ = load_configs(STAGES[stage], spec["recipe"], overrides)
    return configs


def trainer_figures(runtime: float, steps: int, tokens: int | None) -> dict:
    return {
        "train_seconds": runtime,
        "steps": steps,
        "seconds_per_step": runtime / steps,
        "tokens_per_second": tokens / runtime if tokens else None,
        "peak_rss_mb": peak_rss_mb(),
    }


def tokens_seen(log_history: list[dict]) -> int | None:
    return max(
        (entry["num_input_tokens_seen"] for entry in log_history if "num_input_tokens_seen" in entry), default=None
    )


def run_our_stage(stage: str, spec: Spec) -> dict:
    """Our stage as `python -m pipeline STAGE` runs it, with its Trainer's figures from the output folder."""
    from pipeline.cli import main

    output_dir = Path(spec["work"]) / "ours"
    if main(stage_argv(stage, spec, output_dir)) != 0:
        raise SystemExit(f"our {stage} stage failed")
    metrics = json.loads((output_dir / "metrics.json").read_text())
    log = [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]
    return trainer_figures(metrics["train_runtime"], metrics["train_steps"], tokens_seen(log))


@side("sft-ours")
def sft_ours(spec: Spec) -> dict:
    return run_our_stage("sft", spec)


@side("rm-ours")
def rm_ours(spec: Spec) -> dict:
    """Our RM stage; with `plain`, on the same pairs without their `group`, batched as RewardTrainer does."""
    if spec.get("plain"):
        import pipeline.stages.rm as rm

        load = rm.load_datasets

        def ungrouped(script_args: Any) -> tuple:
            train, evaluation = load(script_args)
            return train.remove_columns("group"), evaluation

        rm.load_datasets = ungrouped
    return run_our_stage("rm", spec)


@side("sft-trl")
def sft_trl(spec: Spec) -> dict:
    """A bare trl.SFTTrainer script: the same model, rows and SFTConfig as our stage, nothing around it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from pipeline.data import load_card

    script_args, model_args, args = recipe_configs("sft", spec)
    rows, _ = load_card(script_args.dataset_card, script_args.dataset_train_split, None, script_args.max_train_samples)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    result = trainer.train()
    return trainer_figures(result.metrics["train_runtime"], result.global_step, tokens_seen(trainer.state.log_history))


@side("rm-trl")
def rm_trl(spec: Spec) -> dict:
    """A bare trl.RewardTrainer script on the same model, pairs and RewardConfig as our stage."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardTrainer

    from pipeline.data import load_card

    script_args, model_args, args = recipe_configs("rm", spec)
    rows, _ = load_card(script_args.dataset_card, script_args.dataset_train_split, None, script_args.max_train_samples)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    trainer = RewardTrainer(
        model=model, args=args, train_dataset=rows.remove_columns("group"), processing_class=tokenizer
    )
    result = trainer.train()
    return trainer_figures(result.metrics["train_runtime"], result.global_step, tokens_seen(trainer.state.log_history))


class Phases:
    """Wall time spent inside wrapped functions, by phase; a no-grad-only wrapper skips calls made for training."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, module: Any, name: str, phase: str, no_grad_only: bool = False) -> None:
        fn = getattr(module, name)

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if no_grad_only and torch.is_grad_enabled():
                return fn(*args, **kwargs)
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        setattr(module, name, timed)

    def split(self, total: float, updates: int) -> dict:
        """Seconds per update: rollout (sampling), scoring (reference, value, reward passes), learning (the rest)."""
        rollout, scoring = self.seconds["rollout"], self.seconds["scoring"]
        return {
            "rollout_seconds_per_update": rollout / updates,
            "scoring_seconds_per_update": scoring / updates,
            "learning_seconds_per_update": (total - rollout - scoring) / updates,
        }


@contextlib.contextmanager
def measured_training(spec: Spec, phases: Phases, updates: int, figures: dict) -> Iterator[None]:
    """Times the PPO loop inside it, then fills `figures`; the peak RSS is read before any evaluation."""
    started = time.perf_counter()
    yield
    total = time.perf_counter() - started
    figures.update(
        train_seconds=total,
        updates=updates,
        episodes_per_second=spec["episodes"] / total,
        seconds_per_update=total / updates,
        peak_rss_mb=peak_rss_mb(),
        **phases.split(total, updates),
    )


def gold(policy: torch.nn.Module, tokenizer: Any, spec: Spec) -> float:
    """The sandbox judge's mean gold score of greedy answers to the first `gold_prompts` test prompts."""
    from pipeline.evaluation import evaluate_policy

    policy.eval()
    with torch.no_grad():
        return evaluate_policy(policy, tokenizer, spec["gold_prompts"], spec["max_new_tokens"])["gold_mean"]


@side("gold-sft")
def gold_sft(spec: Spec) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return {
        "gold": gold(
            AutoModelForCausalLM.from_pretrained(spec["sft"]), AutoTokenizer.from_pretrained(spec["sft"]), spec
        )
    }


@side("ppo-ours")
def ppo_ours(spec: Spec) -> dict:
    """Our PPO stage, its loop timed by phase, its policy's gold score measured after the loop."""
    import pipeline.ppo.trainer as ours
    from pipeline.cli import main

    phases, figures = Phases(), {}
    phases.wrap(ours, "sample", "rollout")
    phases.wrap(ours.PPOTrainer, "_sync_engine", "rollout")  # vLLM's weight sync belongs to its rollouts
    for name in ("response_logprobs", "response_values", "response_rewards"):
        phases.wrap(ours, name, "scoring", no_grad_only=True)
    train = ours.PPOTrainer.train

    def measured(trainer: ours.PPOTrainer) -> None:
        with measured_training(spec, phases, trainer.args.num_updates, figures):
            train(trainer)
        if spec["gold_prompts"]:
            figures["gold"] = gold(trainer.policy, trainer.tokenizer, spec)

    ours.PPOTrainer.train = measured
    if main(stage_argv("ppo", spec, Path(spec["work"]) / "ours")) != 0:
        raise SystemExit("our ppo stage failed")
    return figures


@side("ppo-trl112")
def ppo_trl112(spec: Spec) -> dict:
    """TRL 1.12.0's trl.experimental.ppo.PPOTrainer on the same models, prompts and PPO settings as ours."""
    import trl
    import trl.experimental.ppo.ppo_trainer as theirs
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from pipeline.data import load_card

    if trl.__version__ != "1.12.0":
        raise SystemExit(f"the TRL 1.12 side found trl {trl.__version__} at {trl.__file__}")
    settings = spec["ppo"]
    phases, figures = Phases(), {}
    phases.wrap(theirs, "batch_generation", "rollout")
    for name in ("forward", "get_reward"):
        phases.wrap(theirs, name, "scoring", no_grad_only=True)

    tokenizer = AutoTokenizer.from_pretrained(spec["sft"], padding_side="left")
    rows, _ = load_card(spec["prompts_card"], spec["prompts_split"])
    texts = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    dataset = Dataset.from_dict({"input_ids": ids})

    def scorer(path: str) -> torch.nn.Module:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, pad_token_id=tokenizer.pad_token_id
        )

    lora = spec["lora"]
    args = theirs.PPOConfig(
        output_dir=str(Path(spec["work"]) / "trl112"),
        sft_model_path=spec["sft"],
        reward_model_path=spec["rm"],
        stop_token="eos",
        num_sample_generations=0,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
        **{"use_cpu": True, "bf16": False, **settings},  # fp32 unless the spec says bf16
    )
    trainer = theirs.PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=AutoModelForCausalLM.from_pretrained(spec["sft"]),
        ref_model=None if lora else AutoModelForCausalLM.from_pretrained(spec["sft"]),
        reward_model=scorer(spec["rm"]),
        value_model=scorer(spec["rm"]),
        train_dataset=dataset,
        eval_dataset=dataset.select(range(8)),
        peft_config=LoraConfig(**lora, task_type="CAUSAL_LM") if lora else None,
    )
    with measured_training(spec, phases, args.num_total_batches, figures):
        trainer.train()
    if spec["gold_prompts"]:
        figures["gold"] = gold(trainer.accelerator.unwrap_model(trainer.model).policy, tokenizer, spec)
    return figures


def rollout_batch(spec: Spec) -> tuple[torch.nn.Module, Any, torch.Tensor, torch.Tensor]:
    """The SFT policy (its weights in bf16 with `bf16`) and one left-padded batch of PPO prompts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.data import load_card
    from pipeline.precision import hold_frozen
    from pipeline.sampling import encode_prompts, left_pad

    tokenizer = AutoTokenizer.from_pretrained(spec["sft"])
    model = hold_frozen(AutoModelForCausalLM.from_pretrained(spec["sft"]).eval(), spec.get("bf16", False))
    rows, _ = load_card(spec["prompts_card"], spec["prompts_split"], None, spec["rollout_batch"])
    queries, mask = left_pad(encode_prompts(tokenizer, list(rows["prompt"])), tokenizer.pad_token_id)
    return model, tokenizer, queries, mask


def tokens_per_second(spec: Spec, generate_once: Callable[[int], int]) -> dict:
    """Generated tokens per second over `rollout_repeats` batches, after one warm-up batch."""
    generate_once(-1)
    started, tokens = time.perf_counter(), 0
    for repeat in range(spec["rollout_repeats"]):
        tokens += generate_once(repeat)
    seconds = time.perf_counter() - started
    return {"tokens_per_second": tokens / seconds, "tokens": tokens, "seconds": seconds}


@side("rollout-ours")
def rollout_ours(spec: Spec) -> dict:
    """Our PPO sampler (`pipeline.sampling.sample`) on one batch: tokens/s, the log-probs included."""
    from pipeline.sampling import sample, sampling_generator

    model, tokenizer, queries, mask = rollout_batch(spec)

    def once(seed: int) -> int:
        samples = sample(
            model,
            queries,
            mask,
            spec["max_new_tokens"],
            1.0,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            sampling_generator("cpu", seed),
        )
        return samples.responses.numel()

    return tokens_per_second(spec, once)


@side("rollout-generate")
def rollout_generate(spec: Spec) -> dict:
    """A bare `model.generate` sampling the same batch to the same length: the floor our sampler is held to."""
    model, tokenizer, queries, mask = rollout_batch(spec)

    @torch.no_grad()
    def once(seed: int) -> int:
        torch.manual_seed(seed)
        output = model.generate(
            input_ids=queries,
            attention_mask=mask,
            max_new_tokens=spec["max_new_tokens"],
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return output[:, queries.shape[1] :].numel()

    return tokens_per_second(spec, once)


@side("rollout-vllm")
def rollout_vllm(spec: Spec) -> dict:
    """vLLM (`generation_engine: vllm`) sampling the same batch to the same length; the engine's start not timed."""
    from pipeline.vllm_engine import open_engine

    model, tokenizer, queries, mask = rollout_batch(spec)
    prompts = [q[m.bool()].tolist() for q, m in zip(queries, mask, strict=True)]
    with open_engine("vllm", model, prompts, spec["max_new_tokens"], len(prompts), 0) as engine:

        def once(seed: int) -> int:
            rows = engine.generate(prompts, 1.0, spec["max_new_tokens"], tokenizer.eos_token_id, seed=seed + 1)
            return len(rows) * max(map(len, rows))  # as `rollout-ours` counts: every row to the longest

        return tokens_per_second(spec, once)


@side("stage")
def stage_seconds(spec: Spec) -> dict:
    """One pipeline command (`argv`), timed whole: seconds, and the peak memory of this process and of the
    engine process it started, if any (a child, counted once it has ended)."""
    from pipeline.cli import main

    started = time.perf_counter()
    if main([*spec["argv"], "--output_dir", str(Path(spec["work"]) / "out")]) != 0:
        raise SystemExit(f"{spec['argv'][0]} failed")
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "engine_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    torch.set_num_threads(spec["threads"])
    result = {"side": spec["side"], **SIDES[spec["side"]](spec)}
    Path(spec["result"]).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main(sys.argv[1:]))
