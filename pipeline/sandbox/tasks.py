"""The sandbox's instruction task families: prompt templates, item universes, exact answers and splits.

Every family is a set of items (a word, a pair of numbers, ...) with one user-message template. Items,
not prompts, are split, so a test item's answer never appears in any training text: the pretraining
corpus and the demonstrations are written from non-test items only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

from pipeline.sandbox.words import WORDS

SEED = 1234

# Fractions of each family's items. InstructGPT keeps the SFT, RM and PPO prompt sets apart; so do we.
SPLITS: dict[str, float] = {"sft": 0.45, "comparison": 0.20, "ppo": 0.15, "validation": 0.05, "test": 0.15}
TRAINING_SPLITS = ("sft", "comparison", "ppo")


@dataclass(frozen=True)
class Task:
    """One instruction: its family, the item it was made from, the user message and every valid answer."""

    family: str
    item: tuple
    prompt: str
    answers: tuple[str, ...]

    @property
    def answer(self) -> str:
        """The canonical answer (the first valid one)."""
        return self.answers[0]


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    pattern: re.Pattern
    items: Callable[[], list[tuple]]
    parse: Callable[[re.Match], tuple]
    answers: Callable[[tuple], tuple[str, ...]]
    # Many valid answers that are easy to check and harder to produce: the families where a small
    # reward model can learn correctness, not only style.
    check_easy: bool = False

    def task(self, item: tuple) -> Task:
        return Task(self.name, item, self.template.format(*item), self.answers(item))


def _word_pairs() -> dict[tuple[str, str], tuple[str, ...]]:
    pairs: dict[tuple[str, str], list[str]] = {}
    for word in WORDS:
        pairs.setdefault((word[0], word[-1]), []).append(word)
    return {key: tuple(words) for key, words in sorted(pairs.items())}


WORD_PAIRS = _word_pairs()
WORD_SET = frozenset(WORDS)


def _even_items() -> list[tuple]:
    return [(a, b) for a in range(100) for b in range(a + 3, min(a + 13, 100))]


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "reverse",
            "Reverse the word {}.",
            re.compile(r"^Reverse the word ([a-z]+)\.$"),
            lambda: [(w,) for w in WORDS],
            lambda m: (m[1],),
            lambda item: (item[0][::-1],),
        ),
        Family(
            "add",
            "Add {} and {}.",
            re.compile(r"^Add (\d{1,2}) and (\d{1,2})\.$"),
            lambda: [(a, b) for a in range(100) for b in range(100)],
            lambda m: (int(m[1]), int(m[2])),
            lambda item: (str(item[0] + item[1]),),
        ),
        Family(
            "uppercase",
            "Write {} in capital letters.",
            re.compile(r"^Write ([a-z]+) in capital letters\.$"),
            lambda: [(w,) for w in WORDS],
            lambda m: (m[1],),
            lambda item: (item[0].upper(),),
        ),
        Family(
            "repeat",
            "Repeat the word {} {} times.",
            re.compile(r"^Repeat the word ([a-z]+) (\d) times\.$"),
            lambda: [(w, n) for w in WORDS for n in (2, 3, 4)],
            lambda m: (m[1], int(m[2])),
            lambda item: (" ".join([item[0]] * item[1]),),
        ),
        Family(
            "count",
            "How many letters are in {}?",
            re.compile(r"^How many letters are in ([a-z]+)\?$"),
            lambda: [(w,) for w in WORDS],
            lambda m: (m[1],),
            lambda item: (str(len(item[0])),),
        ),
        Family(
            "name_word",
            "Name a word that starts with {} and ends with {}.",
            re.compile(r"^Name a word that starts with ([a-z]) and ends with ([a-z])\.$"),
            lambda: list(WORD_PAIRS),
            lambda m: (m[1], m[2]),
            lambda item: WORD_PAIRS.get(item, ()),
            check_easy=True,
        ),
        Family(
            "even",
            "Give an even number between {} and {}.",
            re.compile(r"^Give an even number between (\d{1,2}) and (\d{1,2})\.$"),
            _even_items,
            lambda m: (int(m[1]), int(m[2])),
            lambda item: tuple(str(x) for x in range(item[0], item[1] + 1) if x % 2 == 0),
            check_easy=True,
        ),
    )
}


def _bucket(family: str, item: tuple, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{family}:{item!r}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(family: str, item: tuple, seed: int = SEED) -> str:
    """The split an item belongs to, a pure function of (seed, family, item)."""
    u, edge = _bucket(family, item, seed), 0.0
    for name, fraction in SPLITS.items():
        edge += fraction
        if u < edge:
            return name
    return name


@cache
def tasks(split: str, family: str, seed: int = SEED) -> tuple[Task, ...]:
    """All tasks of one family in one split, in a fixed pseudo-random order."""
    if split not in SPLITS:
        raise ValueError(f"unknown sandbox split {split!r}; choose from {sorted(SPLITS)}")
    fam = FAMILIES[family]
    items = [item for item in fam.items() if split_of(family, item, seed) == split]
    items.sort(key=lambda item: _bucket(family + "/order", item, seed))
    return tuple(fam.task(item) for item in items)


def interleaved(split: str, seed: int = SEED) -> Iterator[Task]:
    """Tasks of every family in turn (round robin), so any prefix is balanced across families."""
    columns = [tasks(split, name, seed) for name in FAMILIES]
    for row in range(max(len(c) for c in columns)):
        for column in columns:
            if row < len(column):
                yield column[row]


def parse_prompt(prompt: str) -> Task | None:
    """The task a user message asks for, or None when it is not a sandbox instruction."""
    text = prompt.strip()
    for fam in FAMILIES.values():
        match = fam.pattern.match(text)
        if match:
            item = fam.parse(match)
            answers = fam.answers(item)
            return Task(fam.name, item, text, answers) if answers else None
    return None


def test_prompts(n: int, seed: int = SEED) -> list[str]:
    """The first n user messages of the test split, balanced across families."""
    prompts = [task.prompt for task in interleaved("test", seed)]
    if n > len(prompts):
        raise ValueError(f"the sandbox test split has {len(prompts)} prompts, {n} were asked for")
    return prompts[:n]
