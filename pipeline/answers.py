"""Answers of one policy to held-out prompts: greedy and sampled, with RM scores and KL to a reference.

What every evaluation samples (the eval stage, PPO's end of run); the scoring against gold and the
comparison between policies are in `evaluation`. A model comes with the context it is called in
(`sampling.Called`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import mean

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from pipeline.reward import RewardReader, response_rewards
from pipeline.sampling import Called, Engine, decode, encode_prompts, left_pad, response_logprobs, sample


@dataclass
class Answers:
    """One policy's answers to every prompt: a greedy one, and `num_samples` sampled ones, with what each scores."""

    texts: list[str] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # the EOS counted
    rm: list[float] = field(default_factory=list)
    # Per prompt, one entry per sample
    samples: list[list[str]] = field(default_factory=list)
    samples_finished: list[list[bool]] = field(default_factory=list)
    samples_rm: list[list[float]] = field(default_factory=list)
    # Per prompt: the mean over its samples of sum(log pi - log pi_ref), an estimate of KL(policy || reference)
    kl: list[float] = field(default_factory=list)


def _per_prompt(values: list, size: int) -> list[list]:
    return [values[i : i + size] for i in range(0, len(values), size)]


@torch.no_grad()
def answer(
    policy: Called,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    stop_token_id: int | None,
    num_samples: int = 0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    reward_model: Called | None = None,
    reward_reader: RewardReader | None = None,
    reference: Called | None = None,
    synced: bool = False,
    description: str = "evaluating",
    progress: bool = True,
    engine: Engine | None = None,
) -> Answers:
    """Greedy answers and `num_samples` answers per prompt sampled at `temperature`, with their RM scores
    (the RM reads `reward_conversations`) and, against `reference`, the sampled answers' KL; `engine`: who
    draws the tokens (`sampling.sample`)."""
    model, context = policy
    pad, device = tokenizer.pad_token_id, model.device
    answers = Answers()

    def rewards(prompts: list[list[dict]], texts: list[str]) -> list[float]:
        if reward_model is None:
            return []
        return response_rewards(reward_model, reward_reader or RewardReader(tokenizer), prompts, texts, batch_size)

    for start in tqdm(range(0, len(conversations), batch_size), desc=description, unit="batch", disable=not progress):
        chunk = conversations[start : start + batch_size]
        queries, query_mask = (t.to(device) for t in left_pad(encode_prompts(tokenizer, chunk), pad))
        with context():
            greedy = sample(
                *(model, queries, query_mask, max_new_tokens, 0.0, stop_token_id, pad),
                synced=synced,
                engine=engine,
                logprobs=False,
            )
        texts, finished = decode(tokenizer, greedy.responses, greedy.mask, stop_token_id)
        answers.texts += texts
        answers.finished += finished
        answers.tokens += greedy.mask.sum(1).long().tolist()
        answers.rm += rewards(chunk, texts)
        if not num_samples:
            continue
        # Each prompt num_samples times, in batches of at most batch_size rows
        texts, finished, kl = [], [], []
        rows = torch.arange(len(chunk), device=device).repeat_interleave(num_samples)
        for part in rows.split(batch_size):
            q, qm = queries[part], query_mask[part]
            with context():
                drawn = sample(
                    *(model, q, qm, max_new_tokens, temperature, stop_token_id, pad, generator, synced, engine),
                    logprobs=reference is not None,
                )
            part_texts, part_finished = decode(tokenizer, drawn.responses, drawn.mask, stop_token_id)
            texts += part_texts
            finished += part_finished
            if reference is not None:
                ref_model, ref_context = reference
                with ref_context():
                    ref_logprobs, _ = response_logprobs(ref_model, q, qm, drawn.responses, drawn.mask, temperature)
                kl += ((drawn.logprobs - ref_logprobs) * drawn.mask).sum(1).tolist()
        answers.samples += _per_prompt(texts, num_samples)
        answers.samples_finished += _per_prompt(finished, num_samples)
        answers.samples_rm += _per_prompt(rewards([c for c in chunk for _ in range(num_samples)], texts), num_samples)
        answers.kl += [mean(k) for k in _per_prompt(kl, num_samples)]
    return answers
