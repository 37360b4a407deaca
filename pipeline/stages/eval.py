"""Compare policies on held-out prompts: gold and win-rates in the sandbox, RM scores and KL everywhere.

Every policy answers the same prompts greedily. The reference policy (usually SFT) gives the KL
baseline and, in the sandbox, the rule baseline: its answers with the filler cut by a fixed rule.
Without a gold judge (real data) the reward model is the judge, and the samples sit side by side.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

from trl import ModelConfig

from pipeline import outputs
from pipeline.data import load_card
from pipeline.errors import PipelineError
from pipeline.evaluation import Answers, answer, rule_baseline, win_rate
from pipeline.models import load_policy, load_scorer, load_tokenizer, require_same_vocabulary
from pipeline.sampling import plain, sampling_generator
from pipeline.sandbox.evaluation import is_sandbox, score_responses, summarize
from pipeline.sandbox.tasks import parse_prompt, test_prompts

logger = logging.getLogger(__name__)
RULE = "rule"  # the reference's answers with the filler removed


@dataclass(frozen=True)
class EvalConfig:
    policies: dict[str, str]
    output_dir: str
    reward_model: str | None = None
    reference: str | None = None
    prompts_card: str | None = None
    data_files: str | None = None
    split: str = "test"
    num_prompts: int = 200
    max_new_tokens: int = 32
    temperature: float = 1.0
    batch_size: int = 100
    seed: int = 0
    trust_remote_code: bool = False


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


def _prompts(config: EvalConfig) -> list[list[dict]]:
    if config.prompts_card is None:
        return [[{"role": "user", "content": p}] for p in test_prompts(config.num_prompts)]
    rows, _ = load_card(config.prompts_card, config.split, config.data_files, max_rows=config.num_prompts)
    if "prompt" not in rows.column_names:
        raise PipelineError(f"{config.prompts_card}: split {config.split!r} has no prompt column")
    return list(rows["prompt"])


def _win_rates(scores: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Row beats column, ties half."""
    return {a: {b: win_rate(scores[a], scores[b]) for b in scores if b != a} for a in scores}


def _markdown(metrics: dict, samples: list[dict]) -> str:
    names = metrics["names"]
    policies = {name: metrics["policies"][name] for name in names}
    columns = [
        ("gold", "gold_mean"),
        ("correctness", "gold_correctness"),
        ("style", "gold_style"),
        ("exact match", "exact_match"),
        ("RM score", "rm_score_mean"),
        (f"KL to {metrics['reference']}", "kl_to_reference"),
        ("tokens", "response_tokens_mean"),
        ("ends with EOS", "finished_fraction"),
    ]
    columns = [(title, key) for title, key in columns if any(p.get(key) is not None for p in policies.values())]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    lines = [f"# Evaluation on {metrics['prompts']} held-out prompts (greedy)", ""]
    lines += ["| policy | " + " | ".join(t for t, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(cell(p.get(k)) for _, k in columns) + " |" for n, p in policies.items()]
    for title, key in (("Gold win-rate", "gold_win_rate"), ("RM-judged win-rate", "rm_win_rate")):
        table = metrics.get(key)
        if not table:
            continue
        order = [name for name in names if name in table]
        lines += ["", f"## {title} (row beats column, ties half)", ""]
        lines += ["| | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
        lines += [f"| {a} | " + " | ".join(cell(table[a].get(b)) for b in order) + " |" for a in order]
    by_family = {n: p["gold_by_family"] for n, p in policies.items() if "gold_by_family" in p}
    if by_family:
        families = sorted(next(iter(by_family.values())))
        lines += ["", "## Gold per task family", "", "| policy | " + " | ".join(families) + " |"]
        lines += ["|---" * (len(families) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(cell(f[x]) for x in families) + " |" for n, f in by_family.items()]
    lines += ["", "## Samples", "", "| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in samples[:14]:
        cells = [row["prompt"]] + [row[n] or "(empty)" for n in names]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def run(config: EvalConfig) -> dict:
    names = list(config.policies)
    if config.reference is not None and config.reference not in config.policies:
        raise PipelineError(f"--reference {config.reference!r} is not one of the policies {names}")
    conversations = _prompts(config)
    user_messages = [c[-1]["content"] for c in conversations]
    sandbox = is_sandbox(conversations)
    recipe = {k: v for k, v in vars(config).items() if k != "output_dir"}
    work, _ = outputs.start(config.output_dir, "eval", recipe)

    model_args = ModelConfig()
    base_name = config.reference or names[0]
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=config.policies[base_name]), config.trust_remote_code)
    for name, path in config.policies.items():
        require_same_vocabulary(tokenizer, path, name, base_name, config.trust_remote_code)
    if config.reward_model is not None:
        require_same_vocabulary(tokenizer, config.reward_model, "the reward model", base_name, config.trust_remote_code)
    reference = None
    if config.reference is not None:
        reference = load_policy(config.policies[config.reference], model_args, config.trust_remote_code).eval()
    reward_model = None
    if config.reward_model is not None:
        reward_model = load_scorer(config.reward_model, model_args, tokenizer.pad_token_id, config.trust_remote_code)
        reward_model.eval()

    answers: dict[str, Answers] = {}
    for name, path in config.policies.items():
        policy = reference if name == config.reference else load_policy(path, model_args, config.trust_remote_code)
        kl_reference = None if name == config.reference or reference is None else plain(reference)
        answers[name] = answer(
            plain(policy.eval()),
            tokenizer,
            conversations,
            config.max_new_tokens,
            config.batch_size,
            tokenizer.eos_token_id,
            reward_model=None if reward_model is None else plain(reward_model),
            reference=kl_reference,
            temperature=config.temperature,
            generator=sampling_generator(policy.device, config.seed),
            description=f"evaluating {name}",
        )
        if name == config.reference and reference is not None:
            answers[name].kl = [0.0] * len(conversations)

    policies: dict[str, dict] = {}
    for name, a in answers.items():
        policies[name] = {
            "response_tokens_mean": mean(a.tokens),
            "finished_fraction": mean(map(float, a.finished)),
            "rm_score_mean": mean(a.rm) if a.rm else None,
            "kl_to_reference": mean(a.kl) if a.kl else None,
        }
    metrics: dict = {"prompts": len(conversations), "reference": config.reference, "policies": policies}
    samples = [{"prompt": p} for p in user_messages]
    for name, a in answers.items():
        for row, text in zip(samples, a.texts, strict=True):
            row[name] = text
    if sandbox:
        scored = {n: score_responses(user_messages, a.texts, a.finished) for n, a in answers.items()}
        if config.reference is not None:
            ref = answers[config.reference]
            scored[RULE] = rule_baseline(user_messages, ref.texts, ref.finished)
            policies[RULE] = {}
            for row, rule in zip(samples, scored[RULE], strict=True):
                row[RULE] = rule["response"]
        tasks = [parse_prompt(p) for p in user_messages]
        for name, rows in scored.items():
            policies[name].update(summarize(rows))
            policies[name]["exact_match"] = mean(
                float(r["response"] in t.answers) for r, t in zip(rows, tasks, strict=True)
            )
            for row, scored_row in zip(samples, rows, strict=True):
                row["family"] = scored_row["family"]
                row[f"gold_{name}"] = scored_row["gold"]
        metrics["gold_win_rate"] = _win_rates({n: [r["gold"] for r in rows] for n, rows in scored.items()})
    if reward_model is not None:
        metrics["rm_win_rate"] = _win_rates({n: a.rm for n, a in answers.items()})
        for name, a in answers.items():
            for row, score in zip(samples, a.rm, strict=True):
                row[f"rm_{name}"] = score

    # metrics.json sorts its keys; this keeps the order the policies were given in
    metrics["names"] = names + ([RULE] if RULE in policies else [])
    outputs.write_jsonl(work / outputs.EVAL_SAMPLES_FILE, samples)
    (work / outputs.EVAL_REPORT_FILE).write_text(_markdown(metrics, samples))
    outputs.write_metrics(work, metrics)
    outputs.finish(work, config.output_dir)
    print((Path(config.output_dir) / outputs.EVAL_REPORT_FILE).read_text())
    return metrics
