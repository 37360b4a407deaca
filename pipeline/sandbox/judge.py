"""The gold judge: the sandbox's stand-in for a careful human rater.

gold = 0.5 * correctness + 0.5 * style, each in [0, 1]:
- correctness: 1 for a right answer, partial credit for a near miss (an edit away, off by a little, a
  word that meets one of two constraints), 0 for a wrong or missing one;
- style: the mean of three checks a reader sees at a glance, and so can a small reward model:
  terse (no filler phrase, no extra words), consistent casing, and a clean end (the model stopped
  with EOS, no trailing junk).
Only the exact answer and nothing else scores 1.0.
"""

from __future__ import annotations

import re

from pipeline.sandbox.tasks import WORD_SET, Task, parse_prompt

# The filler a third of the demonstrations are wrapped in; the rule baseline cuts exactly these.
FILLER_PREFIXES = (
    "Sure! ",
    "Sure, here you go: ",
    "Of course! The answer is ",
    "Here is the answer: ",
    "Great question! ",
)
FILLER_SUFFIXES = (
    " Hope this helps!",
    " Let me know if you need anything else.",
    " Have a nice day!",
)
_FILLER = re.compile(
    "|".join(re.escape(p.strip()) for p in sorted(FILLER_PREFIXES + FILLER_SUFFIXES, key=len, reverse=True))
)
_TRAILING_JUNK = re.compile(r"[\s.!?…,;:]+$")

CORRECTNESS_WEIGHT = 0.5


def strip_filler(response: str) -> str:
    """The rule baseline: cut the sandbox's known filler phrases, keep everything else."""
    return re.sub(r"\s+", " ", _FILLER.sub(" ", response)).strip()


def _edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _near(candidate: str, target: str) -> float:
    """Half credit scaled by how close a wrong string is to the right one."""
    return 0.5 * max(0.0, 1.0 - _edit_distance(candidate, target) / max(len(target), 1))


def _as_int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"\d{1,4}", text) else None


def _correctness(task: Task, answer: str) -> float:
    if not answer:
        return 0.0
    family, item = task.family, task.item
    if family in ("reverse", "uppercase"):
        target = task.answer
        if answer == target:
            return 1.0
        if answer.lower() == target.lower():
            return 0.5 if family == "uppercase" else 1.0
        return _near(answer.lower(), target.lower())
    if family in ("add", "count"):
        value, target = _as_int(answer), int(task.answer)
        if value is None:
            return 0.0
        off = abs(value - target)
        return 1.0 if off == 0 else 0.5 if off <= 1 else 0.25 if off <= 10 else 0.0
    if family == "repeat":
        word, n = item
        tokens = answer.lower().split()
        share = sum(t == word for t in tokens) / len(tokens)
        return share * (1.0 if len(tokens) == n else 0.5)
    if family == "name_word":
        first, last = item
        word = answer.lower()
        hits = word[:1] == first, word[-1:] == last
        if all(hits):
            return 1.0 if word in WORD_SET else 0.4
        return 0.3 if any(hits) and word in WORD_SET else 0.0
    if family == "even":
        value = _as_int(answer)
        if value is None:
            return 0.0
        low, high = item
        inside = low <= value <= high
        if inside and value % 2 == 0:
            return 1.0
        return 0.4 if inside else 0.3 if value % 2 == 0 and min(abs(value - low), abs(value - high)) <= 2 else 0.0
    raise ValueError(f"no correctness rule for family {family!r}")


def _casing_ok(task: Task, answer: str) -> bool:
    letters = [c for c in answer if c.isalpha()]
    if not letters:
        return True
    wanted = str.isupper if task.family == "uppercase" else str.islower
    return all(wanted(c) for c in letters)


def gold_components(prompt: str, response: str, finished: bool = True) -> dict[str, float]:
    """The judge's parts for one response: correctness, style (and its three checks) and gold.

    `finished` is False when generation hit the length limit without emitting EOS.
    """
    task = parse_prompt(prompt)
    if task is None:
        raise ValueError(f"not a sandbox prompt: {prompt!r}")
    text = response.strip()
    core = strip_filler(text)
    answer = _TRAILING_JUNK.sub("", core)
    expected_words = len(task.answer.split())
    terse = float(bool(answer) and core == text and len(answer.split()) == expected_words)
    casing = float(bool(answer) and _casing_ok(task, answer))
    clean_end = float(bool(answer) and finished and answer == core)
    correctness = _correctness(task, answer)
    style = (terse + casing + clean_end) / 3
    return {
        "correctness": correctness,
        "style": style,
        "terse": terse,
        "casing": casing,
        "clean_end": clean_end,
        "gold": CORRECTNESS_WEIGHT * correctness + (1 - CORRECTNESS_WEIGHT) * style,
    }


def gold_score(prompt: str, response: str, finished: bool = True) -> float:
    """The gold score in [0, 1] of one response to one sandbox prompt."""
    return gold_components(prompt, response, finished)["gold"]
