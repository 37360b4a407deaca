"""The sandbox's data: imperfect human demonstrations, raw pretraining text and prompt sets.

Demonstrations are imperfect the way human ones are (fractions in DEMO_STYLES): some are the exact
answer alone, the rest are wrapped in filler, sloppy (stray casing or trailing junk) or wrong by a
near miss. Demonstrators are chatty on some kinds of question and terse on others: on the chatty
families filler is the most common style, so even a greedy SFT policy carries it there, and the RM
and PPO stages have something visible to fix.

The pretraining text mixes plain statements of the world's facts with chat transcripts whose
assistant turns are noisier still and never end with EOS (raw text marks no turn ends): a base
model knows the facts and the chat markup but not when to stop, which is what SFT teaches it.
"""

from __future__ import annotations

import random

from pipeline.sandbox.judge import FILLER_PREFIXES, FILLER_SUFFIXES
from pipeline.sandbox.tasks import FAMILIES, SEED, TRAINING_SPLITS, Task, interleaved, tasks
from pipeline.sandbox.words import WORDS

CHATTY_FAMILIES = ("add", "uppercase", "even")
DEMO_STYLES = {
    "chatty": {"clean": 0.20, "filler": 0.65, "sloppy": 0.08, "wrong": 0.07},
    "terse": {"clean": 0.65, "filler": 0.15, "sloppy": 0.10, "wrong": 0.10},
}
# One stock phrase dominates, as in real demonstrations.
FILLER_PREFIX_WEIGHTS = (0.5, 0.3, 0.1, 0.05, 0.05)
PRETRAIN_CHAT_STYLES = {"clean": 0.40, "filler": 0.35, "sloppy": 0.10, "wrong": 0.15}
SFT_PER_FAMILY = 1000
VALIDATION_PER_FAMILY = 40
PRETRAIN_DOCUMENTS = 24000
PRETRAIN_VALIDATION_DOCUMENTS = 400

BOS, USER, ASSISTANT = "<s>", "<|user|>", "<|assistant|>"


def wrong_answer(task: Task, rng: random.Random) -> str:
    """A near miss: two letters swapped, off by one or ten, a count off by one, a letter or parity wrong."""
    family, item = task.family, task.item
    if family == "reverse":
        word = task.answer
        i = rng.randrange(len(word) - 1)
        swapped = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        return swapped if swapped != word else item[0]
    if family == "uppercase":
        return item[0].capitalize()
    if family in ("add", "count"):
        value = int(task.answer) + rng.choice([-1, 1, 10, -10] if family == "add" else [-1, 1])
        return str(abs(value))
    if family == "repeat":
        word, n = item
        return " ".join([word] * (n + rng.choice([-1, 1])))
    if family == "name_word":
        first, last = item
        near = [w for w in WORDS if w[0] == first and w[-1] != last]
        return rng.choice(near or list(WORDS))
    if family == "even":
        low, high = item
        odd = [x for x in range(low, high + 1) if x % 2]
        return str(rng.choice(odd)) if odd and rng.random() < 0.5 else str(high + 2 - high % 2)
    raise ValueError(family)


def respond(task: Task, style: str, rng: random.Random) -> str:
    """A human-like response to a task in one style: clean, filler, sloppy or wrong."""
    answer = rng.choice(task.answers)
    if style == "clean":
        return answer
    if style == "wrong":
        return wrong_answer(task, rng)
    if style == "filler":
        text = rng.choices(FILLER_PREFIXES, weights=FILLER_PREFIX_WEIGHTS)[0] + answer
        return text + rng.choice(FILLER_SUFFIXES) if rng.random() < 0.5 else text
    if style == "sloppy":
        has_letters = any(c.isalpha() for c in answer)
        if has_letters and rng.random() < 0.6:
            return answer.lower().capitalize() if task.family == "uppercase" else answer.capitalize()
        return answer + rng.choice(["...", "!!", " ."])
    raise ValueError(f"unknown demonstration style {style!r}")


def demo_styles(family: str) -> dict[str, float]:
    """The style mixture of the demonstrations of one family."""
    return DEMO_STYLES["chatty" if family in CHATTY_FAMILIES else "terse"]


def _pick(styles: dict[str, float], rng: random.Random) -> str:
    return rng.choices(list(styles), weights=list(styles.values()))[0]


def demonstrations(split: str, per_family: int, seed: int = SEED) -> list[dict]:
    """SFT rows (`messages` plus the family and style for analysis), balanced across families."""
    rng = random.Random(f"{seed}:demos:{split}")
    rows = []
    for name in FAMILIES:
        pool = tasks(split, name)
        for i in range(per_family):
            task = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
            style = _pick(demo_styles(name), rng)
            messages = [
                {"role": "user", "content": task.prompt},
                {"role": "assistant", "content": respond(task, style, rng)},
            ]
            rows.append({"messages": messages, "family": name, "style": style})
    rng.shuffle(rows)
    return rows


def _fact(task: Task, rng: random.Random) -> str:
    item = task.item
    match task.family:
        case "reverse":
            return rng.choice(["{0} spelled backwards is {1}.", "The reverse of {0} is {1}."]).format(
                item[0], task.answer
            )
        case "add":
            return rng.choice(["{0} plus {1} is {2}.", "{0} + {1} = {2}"]).format(*item, task.answer)
        case "uppercase":
            return rng.choice(["{0} in capital letters is {1}.", "{1} is {0} in upper case."]).format(
                item[0], task.answer
            )
        case "repeat":
            return f"{item[0]} said {item[1]} times: {task.answer}."
        case "count":
            return f"The word {item[0]} has {task.answer} letters."
        case "name_word":
            return f"Words that start with {item[0]} and end with {item[1]}: {', '.join(task.answers)}."
        case "even":
            return f"The even numbers from {item[0]} to {item[1]} are {', '.join(task.answers)}."
    raise ValueError(task.family)


def pretraining_documents(count: int, splits: tuple[str, ...] = TRAINING_SPLITS, seed: int = SEED) -> list[dict]:
    """Raw text: fact paragraphs and unterminated chat transcripts, from the items of `splits` only."""
    rng = random.Random(f"{seed}:pretrain:{splits}")
    pools = {name: [t for split in splits for t in tasks(split, name)] for name in FAMILIES}
    families = list(FAMILIES)
    docs = []
    for _ in range(count):
        picks = [rng.choice(pools[rng.choice(families)]) for _ in range(rng.randint(3, 6))]
        if rng.random() < 0.5:
            text = " ".join(_fact(task, rng) for task in picks)
        else:
            turns = (f"{USER}{t.prompt}{ASSISTANT}{respond(t, _pick(PRETRAIN_CHAT_STYLES, rng), rng)}" for t in picks)
            text = BOS + "".join(turns)
        docs.append({"text": text})
    return docs


def prompt_rows(split: str, seed: int = SEED) -> list[dict]:
    """Prompt-only rows (conversational) of one split, balanced across families."""
    return [{"prompt": [{"role": "user", "content": t.prompt}], "family": t.family} for t in interleaved(split, seed)]
