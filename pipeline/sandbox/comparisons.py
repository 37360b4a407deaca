"""Ranked comparisons the InstructGPT way: K responses to a prompt, ranked by a noisy labeler.

Rows are in the `ranked` format (prompt + responses best first) with the judge's scores kept beside
them (`gold`, `correctness`, `style`, in the same order), so an RM evaluation can compare itself
with the noise-free ordering and the Bayes ceiling.
"""

from __future__ import annotations

import random

from pipeline.sandbox.corpus import FILLER_PREFIX_WEIGHTS, respond, wrong_answer
from pipeline.sandbox.judge import FILLER_PREFIXES, gold_components
from pipeline.sandbox.labelers import Labeler
from pipeline.sandbox.tasks import FAMILIES, SEED, Task, parse_prompt, tasks

STYLES = ("clean", "filler", "sloppy", "wrong")


def ranked_row(prompt: str, responses: list[str], finished: list[bool], labeler: Labeler, kind: str) -> dict:
    """One ranked list: the labeler's order, best first, with the judge's parts in the same order."""
    parts = [gold_components(prompt, r, f) for r, f in zip(responses, finished, strict=True)]
    order = labeler.rank([p["gold"] for p in parts])
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "responses": [[{"role": "assistant", "content": responses[i]}] for i in order],
        "gold": [parts[i]["gold"] for i in order],
        "correctness": [parts[i]["correctness"] for i in order],
        "style": [parts[i]["style"] for i in order],
        "family": parse_prompt(prompt).family,
        "kind": kind,
        "labeler_temperature": labeler.temperature,
    }


def contrast_pair(task: Task, rng: random.Random) -> tuple[str, str] | None:
    """A right and a wrong answer in the same wrapper, or None when the judge sees a style difference.

    Such pairs differ only in correctness: the RM cannot win them by looking at style.
    """
    right, wrong = rng.choice(task.answers), wrong_answer(task, rng)
    if rng.random() < 0.5:
        prefix = rng.choices(FILLER_PREFIXES, weights=FILLER_PREFIX_WEIGHTS)[0]
        right, wrong = prefix + right, prefix + wrong
    a, b = gold_components(task.prompt, right), gold_components(task.prompt, wrong)
    if a["style"] != b["style"] or a["correctness"] <= b["correctness"]:
        return None
    return right, wrong


def static_comparisons(split: str, k: int, labeler: Labeler, seed: int = SEED) -> list[dict]:
    """K demonstration-style responses (clean, filler, sloppy or wrong) per task of a split, ranked."""
    rng = random.Random(f"{seed}:static-comparisons:{split}")
    rows = []
    for family in FAMILIES:
        for task in tasks(split, family):
            texts = [respond(task, rng.choice(STYLES), rng) for _ in range(k)]
            rows.append(ranked_row(task.prompt, texts, [True] * k, labeler, kind="static"))
    rng.shuffle(rows)
    return rows


def style_comparisons(split: str, seed: int = SEED) -> list[dict]:
    """One right answer per task of a split, bare and wrapped in filler, ranked by the judge without noise.

    A preference a seconds-long reward model can learn (the wrapper is a few tokens), for tests that need
    one that has learnt something.
    """
    rng, judge = random.Random(f"{seed}:style-comparisons:{split}"), Labeler(temperature=0.0)
    rows = []
    for family in FAMILIES:
        for task in tasks(split, family):
            texts = [respond(task, "clean", rng), respond(task, "filler", rng)]
            rows.append(ranked_row(task.prompt, texts, [True, True], judge, kind="style"))
    rng.shuffle(rows)
    return rows
