"""The one evaluator: a policy's greedy answers to held-out prompts, their RM scores, KL to a reference, gold.

The eval stage compares any number of policies with it; PPO compares its policy with the SFT policy
it started from at the end of a run. A model comes with the context it is called in
(`sampling.Called`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.outputs import SANDBOX_SAMPLES_FILE, write_jsonl
from pipeline.sampling import Called, decode, encode_prompts, generate, left_pad, response_logprobs, sample
from pipeline.sandbox.evaluation import score_responses, summarize
from pipeline.sandbox.judge import strip_filler
from pipeline.sandbox.tasks import test_prompts
from pipeline.scoring import sequence_rewards


def win_rate(a: list[float], b: list[float]) -> float:
    """How often `a` beats `b`, row by row, ties counting half."""
    return mean(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))


def rule_baseline(prompts: list[str], responses: list[str], finished: list[bool]) -> list[dict]:
    """The sandbox rows of the responses with the filler cut by a fixed rule (`strip_filler`)."""
    return score_responses(prompts, [strip_filler(r) for r in responses], finished)


@torch.no_grad()
def sampled_kl(
    policy: PreTrainedModel,
    reference: Called,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator,
    synced: bool = False,
) -> list[float]:
    """KL(policy || reference) per query: the sum over a sampled response of log pi - log pi_ref (nats).

    `synced` as in `sample`.
    """
    samples = sample(
        policy, queries, query_mask, max_new_tokens, temperature, stop_token_id, pad_token_id, generator, synced
    )
    model, context = reference
    with context():
        ref_logprobs, _ = response_logprobs(model, queries, query_mask, samples.responses, samples.mask, temperature)
    return ((samples.logprobs - ref_logprobs) * samples.mask).sum(1).tolist()


@dataclass
class Answers:
    """One policy's greedy answers to every prompt, with what each costs and scores."""

    texts: list[str] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the EOS counted
    rm: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)


@torch.no_grad()
def answer(
    policy: Called,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    stop_token_id: int | None,
    reward_model: Called | None = None,
    reference: Called | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    synced: bool = False,
    description: str = "evaluating",
    progress: bool = True,
) -> Answers:
    """Greedy answers with their RM scores, and KL(policy || reference) on answers sampled at `temperature`."""
    model, context = policy
    pad, device = tokenizer.pad_token_id, model.device
    answers = Answers()
    for start in tqdm(range(0, len(conversations), batch_size), desc=description, unit="batch", disable=not progress):
        ids = encode_prompts(tokenizer, conversations[start : start + batch_size])
        queries, query_mask = (t.to(device) for t in left_pad(ids, pad))
        with context():
            greedy = sample(model, queries, query_mask, max_new_tokens, 0.0, stop_token_id, pad, synced=synced)
        texts, finished = decode(tokenizer, greedy.responses, greedy.mask, stop_token_id)
        answers.texts += texts
        answers.finished += finished
        answers.tokens += greedy.mask.sum(1).long().tolist()
        if reward_model is not None:
            scorer, scorer_context = reward_model
            with scorer_context():
                rewards = sequence_rewards(scorer, queries, query_mask, greedy.responses, greedy.mask)
            answers.rm += rewards.tolist()
        if reference is not None:
            answers.kl += sampled_kl(
                model,
                reference,
                queries,
                query_mask,
                max_new_tokens,
                temperature,
                stop_token_id,
                pad,
                generator,
                synced,
            )
    return answers


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
