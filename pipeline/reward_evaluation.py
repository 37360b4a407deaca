"""Reward-model evaluation that tells the truth: accuracy against the Bayes ceiling, and rank agreement with gold.

On held-out comparisons: accuracy on the labelers' (noisy) preferences; where the rows carry the
judge's scores (the sandbox), the Bayes-optimal accuracy of the same pairs under the labelers'
noise and the ratio of the two, the agreement with the noise-free gold ordering (overall, and for
pairs that differ only in correctness, only in style, or in both), and Spearman correlations of
the reward with gold, with the judge's correctness and style parts, and per family.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from statistics import mean, pstdev

from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from pipeline import outputs
from pipeline.data import load_card, read_card
from pipeline.data.fitting import keep_last_turns, templated_length
from pipeline.data.loading import raw_split
from pipeline.errors import PipelineError
from pipeline.models import load_scorer, load_tokenizer, require_model, require_reward_model
from pipeline.reward import reward_scores, spearman
from pipeline.sandbox import bayes_accuracy

logger = logging.getLogger(__name__)
# The score statistics PPO's normalize_reward reads from an RM's metrics.json: the rm stage's, kept by eval-rm
STATISTICS = ("reward_mean", "reward_std")


def comparison_rows(
    card_path: str, split: str, data_files: str | None = None, max_rows: int | None = None
) -> list[dict]:
    """Held-out comparisons as ranked lists (`prompt`, `responses` best first, judge's scores when present)."""
    card = read_card(card_path)
    if card.format == "ranked":
        raw = raw_split(card, split, data_files)
        rows = [row for row in raw.select(range(min(max_rows or len(raw), len(raw))))]
        kept = [row for row in rows if row.get("prompt") and len(row.get("responses") or []) >= 2]
        if len(kept) < len(rows):
            logger.warning(
                "%s [%s]: %d of %d rows dropped (no prompt, or fewer than 2 responses)",
                card_path,
                split,
                len(rows) - len(kept),
                len(rows),
            )
        return kept
    pairs, _ = load_card(card_path, split, data_files, max_rows)
    return [{"prompt": p["prompt"], "responses": [p["chosen"], p["rejected"]]} for p in pairs]


def _difference(row: dict, i: int, j: int) -> str:
    """What sets two responses apart in the judge's eyes: "correctness", "style" or "both"."""
    correctness, style = row["correctness"][i] != row["correctness"][j], row["style"][i] != row["style"][j]
    return "both" if correctness and style else "correctness" if correctness else "style"


def fit_rows(rows: list[dict], tokenizer: PreTrainedTokenizerBase, max_length: int, cut_prompts: bool) -> list[dict]:
    """The held-out lists as training saw its rows at `max_length`: a list whose longest sequence is longer loses
    its prompt's earliest turns (`cut_prompts`, the recipe's fit_prompts) or is left out (RewardTrainer's rule)."""
    kept, cut = [], 0
    for row in rows:
        if all(templated_length(tokenizer, row["prompt"] + r) <= max_length for r in row["responses"]):
            kept.append(row)
            continue
        prompt = keep_last_turns(row["prompt"], row["responses"], tokenizer, max_length) if cut_prompts else None
        if prompt is not None:
            kept.append({**row, "prompt": prompt})
            cut += 1
    if len(kept) < len(rows) or cut:
        logger.info(
            "held-out lists longer than max_length (%d tokens): %d cut from the left, %d left out, of %d",
            max_length,
            cut,
            len(rows) - len(kept),
            len(rows),
        )
    return kept


def evaluate_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    max_length: int | None = None,
    cut_prompts: bool = False,
) -> dict:
    """The metrics of the module docstring, keyed as other stages read them, on the rows as training saw them."""
    if max_length is not None:
        rows = fit_rows(rows, tokenizer, max_length, cut_prompts)
    if not rows:
        raise PipelineError(f"no held-out comparison fits max_length {max_length}: nothing to evaluate the RM on")
    flat = [row["prompt"] + response for row in rows for response in row["responses"]]
    scores = reward_scores(model, tokenizer, flat)
    per_row, start = [], 0
    for row in rows:
        per_row.append(scores[start : start + len(row["responses"])])
        start += len(row["responses"])

    correct, pairs, gold_pairs = 0.0, 0, []
    agree: Counter[str] = Counter()
    ordered: Counter[str] = Counter()
    for row, s in zip(rows, per_row, strict=True):
        gold = row.get("gold")
        for i in range(len(s)):
            for j in range(i + 1, len(s)):
                if row["responses"][i] == row["responses"][j]:
                    continue  # nothing to prefer; the training loader drops these too
                pairs += 1
                correct += 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0
                if gold is not None:
                    gold_pairs.append((gold[i], gold[j]))
                    if gold[i] != gold[j]:
                        for key in ("all", _difference(row, i, j)):
                            ordered[key] += 1
                            agree[key] += (s[i] - s[j]) * (gold[i] - gold[j]) > 0
    metrics = {
        "eval_accuracy": correct / pairs if pairs else None,
        "eval_pairs": pairs,
        "reward_mean": mean(scores),
        "reward_std": pstdev(scores),
    }
    if gold_pairs:
        bayes = bayes_accuracy(gold_pairs, rows[0]["labeler_temperature"])
        families = [row["family"] for row in rows for _ in row["responses"]]

        def column(key: str, family: str | None = None) -> list[float]:
            values = [v for row in rows for v in row[key]]
            return [v for v, f in zip(values, families, strict=True) if family in (None, f)]

        metrics |= {
            "bayes_accuracy": bayes,
            "accuracy_to_bayes": metrics["eval_accuracy"] / bayes,
            "gold_order_agreement": agree["all"] / ordered["all"] if ordered else None,
            "gold_order_agreement_by_difference": {
                key: agree[key] / ordered[key] for key in ("correctness", "style", "both") if ordered[key]
            },
            "spearman_gold": spearman(scores, column("gold")),
            "spearman_correctness": spearman(scores, column("correctness")),
            "spearman_style": spearman(scores, column("style")),
            "spearman_gold_by_family": {
                f: spearman([x for x, g in zip(scores, families, strict=True) if g == f], column("gold", f))
                for f in sorted(set(families))
            },
        }
    return metrics


def run(
    rm_dir: str,
    card: str | None = None,
    split: str | None = None,
    data_files: str | None = None,
    max_rows: int | None = None,
) -> dict:
    """Evaluate a saved reward model (full or LoRA) and merge the figures into its metrics.json.

    `reward_mean` and `reward_std` stay the rm stage's (PPO normalises with them); this evaluation's are
    printed and written as `eval_rm_reward_mean` and `eval_rm_reward_std`.
    """
    require_model(rm_dir)
    require_reward_model(rm_dir, "eval-rm:")
    folder = Path(rm_dir)
    recipe = outputs.read_recipe_file(folder)
    card = card or recipe.get("dataset_card")
    split = split or recipe.get("dataset_test_split") or "test"
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=rm_dir))
    model = load_scorer(rm_dir, ModelConfig(dtype="auto"), tokenizer.pad_token_id)  # in the dtype it was saved in
    rows = comparison_rows(card, split, data_files or recipe.get("data_files"), max_rows)
    metrics = evaluate_reward_model(model, tokenizer, rows, recipe.get("max_length"), recipe.get("fit_prompts", False))
    found = outputs.read_metrics(folder)
    metrics = {f"eval_rm_{k}" if k in STATISTICS else k: v for k, v in metrics.items()}
    outputs.write_metrics(folder, {**found, **metrics})
    logger.info(
        "eval-rm: the figures merged into %s (its reward_mean and reward_std kept)", folder / outputs.METRICS_FILE
    )
    print(json.dumps(metrics, indent=2))
    return metrics
