"""How much of a sandbox SFT policy's correctness rides on its filler: its greedy answers as they are, with
the filler cut afterwards (the rule baseline), and made with the filler's opening tokens banned.

PPO on SmolLM2 learns to drop the filler; this measures what the policy's answers are worth without it
(docs/results.md, precision). The prompts are those of an eval run's samples.jsonl.
    .venv/bin/python -m scripts.filler_probe outputs/smollm2/sft_merged outputs/smollm2/eval/samples.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from pipeline import precision
from pipeline.sandbox import gold_components, strip_filler
from pipeline.sandbox.judge import FILLER_PREFIXES


def greedy_answers(model, tokenizer: PreTrainedTokenizerBase, prompts: list[str], banned: list[int]) -> list[str]:
    """One greedy answer of at most 24 tokens per prompt, never using a `banned` token."""
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(
            **batch,
            max_new_tokens=24,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            bad_words_ids=[[token] for token in banned] or None,
        )
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in output[:, batch.input_ids.shape[1] :]]


def means(prompts: list[str], answers: list[str]) -> dict[str, float]:
    parts = [gold_components(p, a) for p, a in zip(prompts, answers, strict=True)]
    return {key: round(sum(part[key] for part in parts) / len(parts), 3) for key in ("gold", "correctness", "style")}


def probe(policy: str | Path, prompts: list[str]) -> dict:
    """Gold, correctness and style of `policy`'s greedy answers: as made, with the filler cut, with it banned."""
    tokenizer = AutoTokenizer.from_pretrained(policy, padding_side="left")
    model = precision.hold_frozen(AutoModelForCausalLM.from_pretrained(policy), precision.pick_bf16(on_cpu=True))
    openings = sorted({tokenizer.encode(prefix, add_special_tokens=False)[0] for prefix in FILLER_PREFIXES})
    plain = greedy_answers(model.eval(), tokenizer, prompts, [])
    banned = greedy_answers(model, tokenizer, prompts, openings)
    return {
        "prompts": len(prompts),
        "banned": [tokenizer.decode([token]) for token in openings],
        "greedy": means(prompts, plain),
        "filler cut afterwards (the rule baseline)": means(prompts, [strip_filler(a) for a in plain]),
        "filler openings banned": means(prompts, banned),
        "answers": [{"prompt": p, "greedy": a, "banned": b} for p, a, b in zip(prompts, plain, banned, strict=True)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("policy", help="a merged SFT folder")
    parser.add_argument("samples", type=Path, help="an eval run's samples.jsonl (its prompts)")
    args = parser.parse_args()
    prompts = [json.loads(line)["prompt"] for line in args.samples.read_text().splitlines()]
    result = probe(args.policy, prompts)
    print(json.dumps({key: value for key, value in result.items() if key != "answers"}, indent=1))


if __name__ == "__main__":
    main()
