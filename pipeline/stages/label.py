"""Labelling comparisons: K samples from the SFT policy per prompt, ranked by the sandbox's noisy labelers.

The InstructGPT recipe: labelers rank K responses to one prompt; the ranked list later expands to
all K(K-1)/2 pairs. Here the gold judge scores each response and a Bradley-Terry labeler ranks
them. Optionally, contrast pairs (a right and a wrong answer in the same wrapper) are added to the
training lists, so the reward model learns correctness where style cannot tell.
"""

from __future__ import annotations

import logging
import random
import time
from collections import defaultdict
from statistics import mean

from transformers import set_seed
from trl import ModelConfig

from pipeline import outputs
from pipeline.configs import LabelConfig
from pipeline.data import load_card
from pipeline.inputs import recipe_paths
from pipeline.models import load_policy, load_tokenizer
from pipeline.precision import hold_frozen
from pipeline.sampling import encode_prompts, generate
from pipeline.sandbox import Labeler, bayes_accuracy, parse_prompt
from pipeline.sandbox.comparisons import contrast_pair, ranked_row
from pipeline.vllm_engine import check_engine, open_engine

logger = logging.getLogger(__name__)


def _pairs(rows: list[dict]) -> list[tuple[float, float]]:
    return [(g[i], g[j]) for g in (r["gold"] for r in rows) for i in range(len(g)) for j in range(i + 1, len(g))]


def run(config: LabelConfig, recipe: dict) -> dict:
    started = time.monotonic()
    check_engine(config.generation_engine)
    work, _ = outputs.start(config.output_dir, "label", recipe, recipe_paths(recipe))

    # Prompts: the comparison split, the same number per family (a small family's prompts recur, each
    # time with fresh samples), so no family dominates the comparisons
    prompts_data, _ = load_card(config.prompts_card, config.prompts_split)
    by_family: dict[str, list[str]] = defaultdict(list)
    for row in prompts_data:
        by_family[parse_prompt(row["prompt"][-1]["content"]).family].append(row["prompt"][-1]["content"])
    prompts = [by_family[f][i % len(by_family[f])] for i in range(config.prompts_per_family) for f in sorted(by_family)]

    # Policy: K samples per prompt at the recipe's temperature (seeded: the same comparisons whether this
    # stage runs alone or after others in one process)
    set_seed(config.seed)
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=config.model_name_or_path))
    # In the dtype it was saved in, or bf16
    model = hold_frozen(load_policy(config.model_name_or_path, ModelConfig(dtype="auto")), config.bf16)
    k = config.num_responses
    conversations = [[{"role": "user", "content": p}] for p in prompts for _ in range(k)]
    query_ids = encode_prompts(tokenizer, conversations[::k])
    with open_engine(
        config.generation_engine, model, query_ids, config.max_new_tokens, config.generation_batch_size, config.seed
    ) as engine:
        completions = generate(
            model,
            tokenizer,
            conversations,
            config.max_new_tokens,
            config.generation_batch_size,
            temperature=config.temperature,
            description=f"sampling {k} responses x {len(prompts)} prompts",
            engine=engine,
        )

    # Labels: gold scores, then the noisy labeler's ranking of each prompt's K responses
    labeler = Labeler(config.labeler_temperature, seed=config.seed)
    rows = []
    for i, prompt in enumerate(prompts):
        batch = completions[i * k : (i + 1) * k]
        rows.append(ranked_row(prompt, [c.text for c in batch], [c.finished for c in batch], labeler, "sampled"))
    # Held out by a per-prompt coin, not a tail: the families thin out unevenly along the prompt list
    held_out = [random.Random(f"{config.seed}:{p}").random() < config.test_fraction for p in prompts]
    train = [row for row, out in zip(rows, held_out, strict=True) if not out]
    test = [row for row, out in zip(rows, held_out, strict=True) if out]

    # Contrast pairs: same wrapper, right vs wrong answer (training prompts only)
    rng = random.Random(config.seed)
    contrasts = []
    for row in train:
        prompt = row["prompt"][-1]["content"]
        for _ in range(config.contrast_per_prompt):
            pair = contrast_pair(parse_prompt(prompt), rng)
            if pair:
                contrasts.append(ranked_row(prompt, list(pair), [True, True], labeler, "contrast"))
    train = train + contrasts
    random.Random(config.seed + 1).shuffle(train)

    # Save: ranked lists, with the judge's scores beside them for the RM evaluation
    outputs.write_jsonl(work / "train.jsonl", train)
    outputs.write_jsonl(work / "test.jsonl", test)
    metrics = {
        "num_prompts": len(prompts),
        "num_responses": k,
        "train_lists": len(train),
        "test_lists": len(test),
        "contrast_lists": len(contrasts),
        "train_pairs": len(_pairs(train)),
        "test_pairs": len(_pairs(test)),
        "sample_gold_mean": mean(g for r in rows for g in r["gold"]),
        "bayes_accuracy_test": bayes_accuracy(_pairs(test), config.labeler_temperature) if test else None,
        "label_seconds": time.monotonic() - started,
    }
    outputs.write_metrics(work, metrics)
    outputs.finish(work, config.output_dir)
    logger.info("wrote %s: %s", config.output_dir, metrics)
    return metrics
