"""Batched generation for evaluation: left padding, KV cache, stop at EOS."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Completion:
    text: str
    finished: bool  # EOS was generated before the length limit
    num_tokens: int


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    description: str = "generating",
) -> list[Completion]:
    """One completion per conversational prompt, decoded up to (not including) EOS; temperature 0 is greedy."""
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    # Plain sampling from the policy's distribution: no top-k / top-p truncation.
    sampling = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if temperature > 0 else {}
    completions = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc=description, unit="batch"):
            texts = [
                tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
                for p in prompts[start : start + batch_size]
            ]
            batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                **sampling,
                do_sample=temperature > 0,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            for row in output[:, batch["input_ids"].shape[1] :].tolist():
                finished = tokenizer.eos_token_id in row
                tokens = row[: row.index(tokenizer.eos_token_id)] if finished else row
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                completions.append(Completion(text.strip(), finished, len(tokens)))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return completions
