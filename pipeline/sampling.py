"""The one sampler: responses to chat prompts with the KV cache, with their log-probs, for PPO and evaluation.

Sequences are `[left padding | query | response | right padding]`; position ids count real tokens
only, so a left-padded query sees the same positions as an unpadded one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from accelerate.utils import reduce
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline.scoring import entropy_from_logits, logprobs_from_logits, position_ids, query_response, response_mask

# A model and a factory of the context to call it in: a LoRA policy's reference, or a LoRA value
# model's reward model, is the same weights under `disable_adapter`
Called = tuple[torch.nn.Module, Callable[[], contextlib.AbstractContextManager]]


def plain(model: torch.nn.Module) -> Called:
    """A model called as it is."""
    return model, contextlib.nullcontext


def encode_prompts(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]]) -> list[list[int]]:
    """Token ids of each conversation through the chat template, ready for the assistant's turn."""
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def sampling_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A seeded generator for `torch.multinomial` on `device`: PyTorch refuses one from another device."""
    return torch.Generator(device=device).manual_seed(seed)


def left_pad(rows: list[list[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.tensor([[pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def right_pad(rows: list[list], pad: int | float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids (or values) padded on the right to the longest, and the mask of the real ones."""
    width = max(map(len, rows))
    values = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in rows])
    return values, mask


def decode(
    tokenizer: PreTrainedTokenizerBase, responses: torch.Tensor, mask: torch.Tensor, stop_token_id: int | None
) -> tuple[list[str], list[bool]]:
    """(text, whether it ended with the stop token) of each response."""
    lengths = mask.sum(1).long().tolist()
    texts = tokenizer.batch_decode([r[:n] for r, n in zip(responses, lengths, strict=True)], skip_special_tokens=True)
    finished = (responses == stop_token_id).any(1).tolist() if stop_token_id is not None else [False] * len(texts)
    return [t.strip() for t in texts], finished


@dataclass
class Samples:
    responses: torch.Tensor  # (batch, length) token ids, `pad_token_id` after the stop token
    mask: torch.Tensor  # 1 up to and including the stop token
    logprobs: torch.Tensor | None  # log p(token) at the sampling temperature (None: not asked of an engine)
    entropy: torch.Tensor | None  # entropy of each step's sampling distribution


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None = None,
    synced: bool = False,
    engine: Engine | None = None,
    logprobs: bool = True,
) -> Samples:
    """Responses to left-padded queries, with the log-probs of the sampled tokens (temperature 0: greedy).

    The log-probs come from the same forward passes that chose the tokens, so a rollout needs no
    second policy pass to score them. `generator` is on the queries' device (`sampling_generator`).
    `synced`: every rank goes on until all ranks are done. Sharded weights (ZeRO-3, FSDP) need it, as
    their forward passes gather the weights together; it also keeps the random streams, and so a run,
    the same under every engine.
    With an `engine` (vLLM), the engine draws the tokens (seeded from `generator`, else by its own
    stream) and `model` scores them in one pass (unless `logprobs` is False: that pass costs about
    what the engine's sampling does): the log-probs are the model's, whatever the engine's numerics.
    """
    if engine is not None:
        return _sample_with(
            *(engine, model, queries, query_mask, max_new_tokens, temperature, stop_token_id, pad_token_id),
            generator,
            logprobs,
        )
    batch = len(queries)
    mask = query_mask.clone()
    finished = torch.zeros(batch, dtype=torch.bool, device=queries.device)
    tokens, logprobs, entropies = [], [], []
    inputs, positions, cache = queries, position_ids(mask), None
    for _ in range(max_new_tokens):
        output = model(
            input_ids=inputs, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True
        )
        cache = output.past_key_values
        logits = output.logits[:, -1].float()
        if temperature > 0:
            logits = logits / temperature
            next_token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        else:
            next_token = logits.argmax(-1)
        next_token = torch.where(finished, pad_token_id, next_token)
        tokens.append(next_token)
        logprobs.append(logprobs_from_logits(logits, next_token))
        entropies.append(entropy_from_logits(logits))
        if stop_token_id is not None:
            finished = finished | (next_token == stop_token_id)
        pending = (~finished).sum()
        if synced:
            pending = reduce(pending, "sum")
        if pending == 0:
            break
        positions = positions[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        inputs = next_token.unsqueeze(1)
    responses = torch.stack(tokens, 1)
    return Samples(
        responses, response_mask(responses, stop_token_id), torch.stack(logprobs, 1), torch.stack(entropies, 1)
    )


class Engine(Protocol):
    """A generation engine other than `sample`'s own loop (`vllm_engine.VLLMEngine`): token ids in and out."""

    def generate(
        self,
        prompts: list[list[int]],
        temperature: float,
        max_new_tokens: int,
        stop_token_id: int | None,
        seed: int | None = None,
    ) -> list[list[int]]: ...


def _sample_with(
    engine: Engine,
    model: PreTrainedModel,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_token_id: int | None,
    pad_token_id: int,
    generator: torch.Generator | None,
    logprobs: bool,
) -> Samples:
    prompts = [q[m.bool()].tolist() for q, m in zip(queries, query_mask, strict=True)]
    # Seeds from `generator`: the draws follow its state, which a checkpoint keeps
    seed = None if generator is None else int(torch.randint(2**31, (1,), generator=generator, device=generator.device))
    rows = engine.generate(prompts, temperature, max_new_tokens, stop_token_id, seed)
    responses = right_pad(rows, pad_token_id)[0].to(queries.device)
    mask = response_mask(responses, stop_token_id)
    if not logprobs:
        return Samples(responses, mask, None, None)
    return Samples(responses, mask, *response_logprobs(model, queries, query_mask, responses, mask, temperature))


def response_logprobs(
    model: PreTrainedModel,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, entropies) of the response tokens under `model`, at the sampling temperature."""
    input_ids, mask = query_response(queries, query_mask, responses, response_mask)
    # Logits only where a response token is predicted: a real vocabulary (49k for SmolLM2) over the
    # query positions too would multiply the largest tensor of the pass by (query + response) / response
    keep = responses.shape[1] + 1
    logits = model(
        input_ids=input_ids, attention_mask=mask, position_ids=position_ids(mask), logits_to_keep=keep
    ).logits
    logits = logits[:, -keep:-1].float()
    if temperature > 0:
        logits = logits / temperature
    return logprobs_from_logits(logits, responses), entropy_from_logits(logits)


@dataclass(frozen=True)
class Completion:
    text: str
    finished: bool  # EOS was generated before the length limit
    num_tokens: int  # not counting the EOS


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    description: str = "generating",
    engine: Engine | None = None,
) -> list[Completion]:
    """One completion per conversational prompt, up to EOS; temperature 0 is greedy, else torch's global RNG
    (or the `engine`'s seeded stream)."""
    was_training = model.training
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # Under a launcher every rank answers the same prompts; in step, in case sharded weights need it
    synced = torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1
    completions = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=description, unit="batch"):
            ids = encode_prompts(tokenizer, prompts[start : start + batch_size])
            queries, query_mask = (t.to(model.device) for t in left_pad(ids, pad))
            samples = sample(
                *(model, queries, query_mask, max_new_tokens, temperature, eos, pad),
                synced=synced,
                engine=engine,
                logprobs=False,
            )
            texts, finished = decode(tokenizer, samples.responses, samples.mask, eos)
            lengths = samples.mask.sum(1).long().tolist()
            completions += [Completion(t, f, n - f) for t, f, n in zip(texts, finished, lengths, strict=True)]
    finally:
        model.train(was_training)
    return completions
