"""How much of a sandbox SFT policy's correctness rides on its filler: its greedy answers as they are, with
the filler cut afterwards (the rule baseline), and made with the filler's opening tokens banned.

PPO on SmolLM2 learns to drop the filler; this measures what the policy's answers are worth without it
(docs/results.md, precision). The prompts are those of an eval run's samples.jsonl, encoded as the eval
encodes them; it samples with transformers' `generate` (the eval uses our sampler: the same greedy
answers up to rounding).
    .venv/bin/python -m scripts.filler_probe outputs/smollm2/sft_merged outputs/smollm2/eval/samples.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pipeline import precision
from pipeline.sampling import encode_prompts, left_pad
from pipeline.sandbox import gold_components, strip_filler
from pipeline.sandbox.judge import FILLER_PREFIXES

MAX_NEW_TOKENS = 24  # as the SmolLM2 chain's eval


def conversations(prompts: list[str]) -> list[list[dict]]:
    return [[{"role": "user", "content": prompt}] for prompt in prompts]


def filler_openings(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    """The token each filler prefix opens an answer with, tokenized where it stands: after the chat's turn."""
    turn = tokenizer.apply_chat_template(conversations([prompt])[0], add_generation_prompt=True, tokenize=False)
    start = len(encode_prompts(tokenizer, conversations([prompt]))[0])
    return sorted({tokenizer.encode(turn + prefix, add_special_tokens=False)[start] for prefix in FILLER_PREFIXES})


def greedy_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], banned: list[int]
) -> tuple[list[str], list[list[int]]]:
    """One greedy answer per prompt, up to EOS, that uses no `banned` token anywhere; its text and token ids."""
    queries, mask = left_pad(encode_prompts(tokenizer, conversations(prompts)), tokenizer.pad_token_id)
    with torch.no_grad():
        output = model.generate(
            input_ids=queries,
            attention_mask=mask,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bad_words_ids=[[token] for token in banned] or None,
        )
    new = output[:, queries.shape[1] :].tolist()
    ids = [[t for t in row if t not in (tokenizer.pad_token_id, tokenizer.eos_token_id)] for row in new]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids], ids


def means(prompts: list[str], answers: list[str]) -> dict[str, float]:
    """The judge's gold, correctness and style, averaged over prompts."""
    parts = [gold_components(p, a) for p, a in zip(prompts, answers, strict=True)]
    return {key: round(sum(part[key] for part in parts) / len(parts), 3) for key in ("gold", "correctness", "style")}


def probe(policy: str | Path, prompts: list[str]) -> dict:
    """Gold, correctness and style of `policy`'s greedy answers: as made, with the filler cut, with it banned."""
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = precision.hold_frozen(AutoModelForCausalLM.from_pretrained(policy), precision.pick_bf16(on_cpu=True))
    banned = filler_openings(tokenizer, prompts[0])
    plain, _ = greedy_answers(model.eval(), tokenizer, prompts, [])
    without, without_ids = greedy_answers(model, tokenizer, prompts, banned)
    return {
        "prompts": len(prompts),
        "banned": [tokenizer.decode([token]) for token in banned],
        "banned_ids": banned,
        "greedy": means(prompts, plain),
        "filler cut afterwards (the rule baseline)": means(prompts, [strip_filler(a) for a in plain]),
        "filler openings banned": means(prompts, without),
        "answers": [
            {"prompt": p, "greedy": a, "banned": b, "banned_ids": ids}
            for p, a, b, ids in zip(prompts, plain, without, without_ids, strict=True)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a merged SFT folder")
    parser.add_argument("samples", type=Path, help="an eval run's samples.jsonl (its prompts)")
    args = parser.parse_args()
    prompts = [json.loads(line)["prompt"] for line in args.samples.read_text().splitlines()]
    result = probe(args.policy, prompts)
    changed = [
        {
            "prompt": row["prompt"],
            "greedy": row["greedy"],
            "banned": row["banned"],
            "correctness": [gold_components(row["prompt"], row[key])["correctness"] for key in ("greedy", "banned")],
        }
        for row in result.pop("answers")
        if strip_filler(row["greedy"]) != row["banned"]
    ]
    print(json.dumps({**result, "answers that differ from the cut ones": changed}, indent=1))


if __name__ == "__main__":
    main()
