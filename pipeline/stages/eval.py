"""Compare policies on held-out prompts: gold in the sandbox, RM scores and KL everywhere, with 95% intervals.

Every policy answers the same prompts greedily and `num_samples` times at `temperature`. The reference
policy (usually SFT) gives the KL baseline, the best-of-n frontier (`best_of_n` samples per prompt,
picked by the reward model) and, in the sandbox, the rule baseline: its answers with the filler cut
by a fixed rule. Without a gold judge (real data) the reward model is the judge, and the samples sit
side by side.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from trl import ModelConfig

from pipeline import outputs
from pipeline.answers import Answers, answer
from pipeline.data import load_card
from pipeline.errors import PipelineError
from pipeline.evaluation import RULE, compare
from pipeline.inputs import recipe_paths
from pipeline.intervals import MIN_VALUES
from pipeline.models import (
    check_chat_template,
    load_policy,
    load_scorer,
    load_tokenizer,
    require_reward_model,
    require_same_vocabulary,
)
from pipeline.precision import hold_frozen, pick_bf16
from pipeline.reward import load_reward_reader
from pipeline.sampling import encode_prompts, plain, sampling_generator
from pipeline.sandbox.evaluation import is_sandbox
from pipeline.sandbox.tasks import test_prompts
from pipeline.vllm_engine import check_engine, open_engine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    policies: dict[str, str]
    output_dir: str
    reward_model: str | None = None
    reference: str | None = None
    prompts_card: str | None = None
    data_files: str | None = None
    split: str = "test"
    num_prompts: int = 1000
    max_new_tokens: int = 32
    num_samples: int = 4
    best_of_n: int = 16
    temperature: float = 1.0
    batch_size: int = 100
    seed: int = 0
    trust_remote_code: bool = False
    bf16: bool = False  # every model's weights in bf16
    generation_engine: str = "torch"  # or vllm: one engine process, each policy's weights loaded in turn


def parse_policies(specs: list[str]) -> dict[str, str]:
    """`NAME=DIR` pairs, in order; a name may appear once."""
    policies: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise PipelineError(f"--policies takes NAME=DIR pairs, got {spec!r}")
        if name in policies or name == RULE:
            raise PipelineError(f"--policies: the name {name!r} is {'reserved' if name == RULE else 'given twice'}")
        policies[name] = path
    return policies


def command(policies: list[str], bf16: str, reference: str | None = None, **options: object) -> dict:
    """`python -m pipeline eval`: NAME=DIR policies, measured against `reference` (default: sft, when given)."""
    named = parse_policies(policies)
    reference = reference or ("sft" if "sft" in named else None)
    on_bf16 = pick_bf16(on_cpu=True) if bf16 == "auto" else bf16 == "true"  # eval samples on the CPU
    return run(EvalConfig(policies=named, reference=reference, bf16=on_bf16, **options))


def _prompts(config: EvalConfig) -> list[list[dict]]:
    if config.prompts_card is None:
        return [[{"role": "user", "content": p}] for p in test_prompts(config.num_prompts)]
    rows, _ = load_card(config.prompts_card, config.split, config.data_files, max_rows=config.num_prompts)
    if "prompt" not in rows.column_names:
        raise PipelineError(f"{config.prompts_card}: split {config.split!r} has no prompt column")
    return list(rows["prompt"])


def _cell(value: float | dict | None) -> str:
    """A number, or a mean with its interval."""
    if value is None:
        return "-"
    if isinstance(value, dict) and value["ci"] is None:
        return f"{value['mean']:.3f} (no interval)"
    if isinstance(value, dict):
        return f"{value['mean']:.3f} [{value['ci'][0]:.3f}, {value['ci'][1]:.3f}]"
    return f"{value:.3f}"


def _markdown(metrics: dict, samples: list[dict]) -> str:
    names = metrics["names"]
    policies = {name: metrics["policies"][name] for name in names}
    columns = [
        ("gold (greedy)", "gold"),
        ("gold (sampled)", "gold_sampled"),
        ("correctness", "gold_correctness"),
        ("style", "gold_style"),
        ("exact match", "exact_match"),
        ("RM score (greedy)", "rm_score"),
        ("RM score (sampled)", "rm_score_sampled"),
        (f"KL to {metrics['reference']}", "kl_to_reference"),
        ("tokens", "response_tokens_mean"),
        ("ends with EOS", "finished_fraction"),
    ]
    columns = [(title, key) for title, key in columns if any(p.get(key) is not None for p in policies.values())]
    samples_per_prompt = ", ".join(f"{n} {k}" for n, k in metrics["samples_per_prompt"].items())
    lines = [
        f"# Evaluation on {metrics['prompts']} held-out prompts",
        "",
        f"Greedy answers, and answers sampled at T = {metrics['temperature']} ({samples_per_prompt} per prompt). "
        f"Brackets: 95% bootstrap intervals over prompts (none under {MIN_VALUES} prompts); differences and win-rates "
        "are paired by prompt.",
        "",
    ]
    lines += ["| policy | " + " | ".join(t for t, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(_cell(p.get(k)) for _, k in columns) + " |" for n, p in policies.items()]
    tables = (
        ("Gold difference, greedy (row minus column)", "gold_difference"),
        ("Gold difference, sampled (row minus column)", "gold_sampled_difference"),
        ("Gold win-rate (row beats column, ties half)", "gold_win_rate"),
        ("RM-judged win-rate (row beats column, ties half)", "rm_win_rate"),
    )
    for title, key in tables:
        table = metrics.get(key)
        if not table:
            continue
        order = [name for name in names if name in table]
        lines += ["", f"## {title}", ""]
        lines += ["| | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(_cell(table[a].get(b)) for b in order) + " |" for a in order]
    if metrics.get("best_of_n"):
        lines += ["", f"## Best-of-n of {metrics['reference']}'s samples, picked by the reward model", ""]
        lines += [
            "KL: best-of-n's, with the policy taken to be its samples; bound: log n - (n-1)/n, reached only "
            "when no two samples are alike.",
            "",
            "| n | KL (nats) | bound | RM score | gold | gold minus greedy | gold if gold picked |",
            "|---" * 7 + "|",
        ]
        lines += [
            f"| {p['n']} | {p['kl']:.3f} | {p['kl_bound']:.3f} | {p['rm_picked_rm']:.3f} | "
            f"{_cell(p['rm_picked_gold'])} | {_cell(p['rm_picked_gold_minus_greedy'])} | {p['gold_picked_gold']:.3f} |"
            for p in metrics["best_of_n"]
        ]
    by_family = {n: p["gold_by_family"] for n, p in policies.items() if "gold_by_family" in p}
    if by_family:
        families = sorted(next(iter(by_family.values())))
        lines += ["", "## Gold per task family (greedy)", "", "| policy | " + " | ".join(families) + " |"]
        lines += ["|---" * (len(families) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(_cell(f[x]) for x in families) + " |" for n, f in by_family.items()]
    lines += ["", "## Samples", "", "| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in samples[:14]:
        cells = [row["prompt"]] + [row[n] or "(empty)" for n in names]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run(config: EvalConfig) -> dict:
    names = list(config.policies)
    if config.reference is not None and config.reference not in config.policies:
        raise PipelineError(f"--reference {config.reference!r} is not one of the policies {names}")
    for key in ("num_prompts", "batch_size", "max_new_tokens"):
        if getattr(config, key) < 1:
            raise PipelineError(f"--{key} must be at least 1, got {getattr(config, key)}")
    for key in ("num_samples", "best_of_n"):
        if getattr(config, key) < 0:
            raise PipelineError(f"--{key} must be 0 or more, got {getattr(config, key)}")
    if (config.num_samples or config.best_of_n) and not config.temperature > 0:
        raise PipelineError(f"--temperature must be above 0 to sample answers, got {config.temperature}")
    conversations = _prompts(config)
    if len(conversations) < MIN_VALUES:
        logger.warning(
            "%d prompts: the report gives means without intervals (a 95%% interval needs %d or more)",
            len(conversations),
            MIN_VALUES,
        )
    sandbox = is_sandbox(conversations)
    model_args = ModelConfig()
    base_name = config.reference or names[0]
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=config.policies[base_name]), config.trust_remote_code)
    check_chat_template(tokenizer.chat_template, config.policies[base_name], assistant_only_loss=False)
    recipe = {k: v for k, v in vars(config).items() if k != "output_dir"}
    check_engine(config.generation_engine)
    work, _ = outputs.start(config.output_dir, "eval", recipe, recipe_paths(recipe))

    for name, path in config.policies.items():
        require_same_vocabulary(tokenizer, path, name, base_name, config.trust_remote_code)
    reference = None
    if config.reference is not None:
        reference = load_policy(config.policies[config.reference], model_args, config.trust_remote_code)
        reference = hold_frozen(reference.eval(), config.bf16)
    reward_model, reader = None, None
    if config.reward_model is not None:
        require_reward_model(config.reward_model, "--reward_model")
        require_same_vocabulary(tokenizer, config.reward_model, "the reward model", base_name, config.trust_remote_code)
        reward_model = load_scorer(config.reward_model, model_args, tokenizer.pad_token_id, config.trust_remote_code)
        reward_model = hold_frozen(reward_model.eval(), config.bf16)
        reader = load_reward_reader(config.reward_model, tokenizer, config.trust_remote_code)

    answers: dict[str, Answers] = {}
    engine, prompt_ids = None, encode_prompts(tokenizer, conversations)
    with contextlib.ExitStack() as stack:
        for name, path in config.policies.items():
            is_reference = name == config.reference
            if is_reference:
                policy = reference
            else:
                policy = hold_frozen(load_policy(path, model_args, config.trust_remote_code), config.bf16)
            # vLLM: one engine process, each policy's weights loaded in turn (a policy of another shape: a new one)
            if engine is not None and engine.serves(policy):
                engine.load_weights(policy)
            else:
                if engine is not None:
                    engine.close()
                engine = stack.enter_context(
                    open_engine(
                        *(config.generation_engine, policy, prompt_ids, config.max_new_tokens, config.batch_size),
                        config.seed,
                    )
                )
            # In the sandbox the reference draws enough samples for best-of-n (its sampled gold uses them all)
            frontier = is_reference and sandbox and reward_model is not None
            num_samples = max(config.num_samples, config.best_of_n if frontier else 0)
            answers[name] = answer(
                plain(policy.eval()),
                tokenizer,
                conversations,
                config.max_new_tokens,
                config.batch_size,
                tokenizer.eos_token_id,
                num_samples=num_samples,
                temperature=config.temperature,
                generator=sampling_generator(policy.device, config.seed),
                reward_model=None if reward_model is None else plain(reward_model),
                reward_reader=reader,
                reference=None if is_reference or reference is None else plain(reference),
                description=f"evaluating {name}",
                engine=engine,
            )
            if is_reference:
                answers[name].kl = [0.0] * len(conversations)

    metrics, samples = compare(conversations, answers, config.reference, sandbox, config.temperature, config.seed)
    outputs.write_jsonl(work / outputs.EVAL_SAMPLES_FILE, samples)
    (work / outputs.EVAL_REPORT_FILE).write_text(_markdown(metrics, samples))
    outputs.write_metrics(work, metrics)
    outputs.finish(work, config.output_dir)
    print((Path(config.output_dir) / outputs.EVAL_REPORT_FILE).read_text())
    return metrics
