"""The one evaluator: policies' answers (`answers.answer`) compared on RM score, KL, gold and best-of-n.

The eval stage compares any number of policies with it; the PPO stage compares its policy with the
SFT policy it started from at the end of a run, through the same `answer` and `compare`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from statistics import mean

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.answers import Answers
from pipeline.intervals import best_of_n, best_of_n_kl, best_of_n_sample_kl, differences, interval, wins
from pipeline.outputs import SANDBOX_SAMPLES_FILE, write_jsonl
from pipeline.sampling import generate
from pipeline.sandbox.evaluation import gold_rewards, score_responses, summarize
from pipeline.sandbox.judge import strip_filler
from pipeline.sandbox.tasks import parse_prompt, test_prompts

RULE = "rule"  # the reference's greedy answers with the filler cut by a fixed rule (`strip_filler`)


def rule_baseline(prompts: list[str], responses: list[str], finished: list[bool]) -> list[dict]:
    """The sandbox rows of the responses with the filler cut by a fixed rule (`strip_filler`)."""
    return score_responses(prompts, [strip_filler(r) for r in responses], finished)


def _pairs(per_prompt: dict[str, list[float]], statistic: Callable, seed: int) -> dict[str, dict[str, dict]]:
    """`statistic(a, b)` per prompt for every ordered pair of policies, with its bootstrap interval over prompts."""
    return {
        a: {b: interval(statistic(per_prompt[a], per_prompt[b]), seed) for b in per_prompt if b != a}
        for a in per_prompt
    }


def _frontier(reference: Answers, gold: list[list[float]], greedy_gold: list[float], seed: int) -> list[dict]:
    """Best-of-n of the reference's samples for n = 1..N, picked by the RM (raw score) and by gold, against KL.

    `kl`: per prompt, best-of-n's KL with the policy taken to be its N samples, averaged; `kl_bound`:
    log n - (n - 1) / n, what it would be if no two samples were alike.
    """
    rm, points = reference.samples_rm, []
    for n in range(1, len(rm[0]) + 1):
        kl = mean(best_of_n_sample_kl(r, texts, n) for r, texts in zip(rm, reference.samples, strict=True))
        point = {"n": n, "kl": kl, "kl_bound": best_of_n_kl(n)}
        picked = [best_of_n(r, g, n) for r, g in zip(rm, gold, strict=True)]
        point["rm_picked_rm"] = mean(best_of_n(r, r, n) for r in rm)
        point["rm_picked_gold"] = interval(picked, seed)
        point["gold_picked_gold"] = mean(best_of_n(g, g, n) for g in gold)
        point["rm_picked_gold_minus_greedy"] = interval(differences(picked, greedy_gold), seed)
        points.append(point)
    return points


def _by_family(values: list[float], families: list[str]) -> dict[str, float]:
    return {f: mean(v for v, g in zip(values, families, strict=True) if g == f) for f in sorted(set(families))}


def compare(
    conversations: list[list[dict]],
    answers: dict[str, Answers],
    reference: str | None,
    sandbox: bool,
    temperature: float,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """(metrics, one sample row per prompt) of policies that answered the same prompts.

    Every mean carries its 95% bootstrap interval over prompts; differences and win-rates between
    two policies are paired by prompt. In the sandbox: gold of greedy and of sampled answers, and the
    rule baseline; with RM scores: RM-judged win-rates; with the reference's samples: best-of-n.
    """
    names = list(answers)
    prompts = [c[-1]["content"] for c in conversations]
    samples = [{"prompt": p} for p in prompts]
    policies: dict[str, dict] = {}
    for name, a in answers.items():
        policies[name] = {"response_tokens_mean": mean(a.tokens), "finished_fraction": mean(map(float, a.finished))}
        if a.rm:
            policies[name]["rm_score"] = interval(a.rm, seed)
        if a.samples_rm:
            policies[name]["rm_score_sampled"] = interval([mean(r) for r in a.samples_rm], seed)
        if a.kl:
            policies[name]["kl_to_reference"] = interval(a.kl, seed)
        for row, text, score in zip(samples, a.texts, a.rm or [None] * len(samples), strict=True):
            row[name] = text
            if score is not None:
                row[f"rm_{name}"] = score
    metrics: dict = {
        "prompts": len(conversations),
        "samples_per_prompt": {n: len(a.samples[0]) if a.samples else 0 for n, a in answers.items()},
        "reference": reference,
        "temperature": temperature,
        "policies": policies,
    }
    if all(a.rm for a in answers.values()):
        metrics["rm_win_rate"] = _pairs({n: a.rm for n, a in answers.items()}, wins, seed)
    if not sandbox:
        metrics["names"] = names
        return metrics, samples

    greedy = {n: score_responses(prompts, a.texts, a.finished) for n, a in answers.items()}
    if reference is not None:
        greedy[RULE] = rule_baseline(prompts, answers[reference].texts, answers[reference].finished)
        policies[RULE] = {}
        for row, rule in zip(samples, greedy[RULE], strict=True):
            row[RULE] = rule["response"]
    tasks = [parse_prompt(p) for p in prompts]
    for name, rows in greedy.items():
        policies[name].update(summarize(rows))
        policies[name]["gold"] = interval([r["gold"] for r in rows], seed)
        policies[name]["exact_match"] = mean(
            float(r["response"] in t.answers) for r, t in zip(rows, tasks, strict=True)
        )
        for row, scored in zip(samples, rows, strict=True):
            row["family"] = scored["family"]
            row[f"gold_{name}"] = scored["gold"]
    sampled: dict[str, list[list[float]]] = {}
    for name, a in answers.items():
        if a.samples:
            sampled[name] = [
                gold_rewards([c] * len(texts), texts, finished)
                for c, texts, finished in zip(conversations, a.samples, a.samples_finished, strict=True)
            ]
            policies[name]["gold_sampled"] = interval([mean(g) for g in sampled[name]], seed)
            for row, gold in zip(samples, sampled[name], strict=True):
                row[f"gold_sampled_{name}"] = mean(gold)
    gold = {n: [r["gold"] for r in rows] for n, rows in greedy.items()}
    metrics["gold_win_rate"] = _pairs(gold, wins, seed)
    metrics["gold_difference"] = _pairs(gold, differences, seed)
    metrics["gold_sampled_difference"] = _pairs(
        {n: [mean(g) for g in s] for n, s in sampled.items()}, differences, seed
    )
    family = [row["family"] for row in samples]
    metrics["gold_win_rate_by_family"] = {
        a: {b: _by_family(wins(gold[a], gold[b]), family) for b in gold if b != a} for a in gold
    }
    ref = answers.get(reference) if reference is not None else None
    if ref is not None and ref.samples_rm and len(ref.samples[0]) > 1:
        metrics["best_of_n"] = _frontier(ref, sampled[reference], gold[reference], seed)
    metrics["names"] = names + ([RULE] if RULE in policies else [])
    return metrics, samples


def evaluate_policy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    num_prompts: int,
    max_new_tokens: int = 32,
    batch_size: int = 100,
    samples_dir: str | Path | None = None,
) -> dict:
    """Gold metrics of greedy responses to the first `num_prompts` sandbox test prompts (samples saved when asked)."""
    prompts = test_prompts(num_prompts)
    conversations = [[{"role": "user", "content": p}] for p in prompts]
    completions = generate(model, tokenizer, conversations, max_new_tokens, batch_size)
    rows = score_responses(prompts, [c.text for c in completions], [c.finished for c in completions])
    if samples_dir is not None:
        write_jsonl(Path(samples_dir, SANDBOX_SAMPLES_FILE), rows)
    tokens = mean(c.num_tokens for c in completions)
    return {**summarize(rows), "gold_num_prompts": len(rows), "response_tokens_mean": tokens}
