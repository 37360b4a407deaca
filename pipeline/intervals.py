"""Error bars over prompts: percentile-bootstrap intervals, win indicators, best-of-n by order statistics.

Every comparison of two policies is paired: both answer the same prompts, so the statistic is
computed per prompt first (a gold difference, a win), and the bootstrap resamples prompts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

RESAMPLES = 2000
LEVEL = 0.95
# Below this many prompts a bootstrap interval is mostly an artefact of the few values (one prompt gives one of
# zero width): the mean stands alone
MIN_VALUES = 10


def interval(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> dict:
    """The mean of per-prompt values and its percentile-bootstrap interval: {"mean", "ci": [low, high]}, with
    "ci" None for fewer than `MIN_VALUES` values."""
    if not values:
        raise ValueError("an interval needs at least one value")
    if len(values) < MIN_VALUES:
        return {"mean": sum(values) / len(values), "ci": None}
    data = torch.tensor(values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    means = data[torch.randint(len(data), (resamples, len(data)), generator=generator)].mean(1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"mean": float(data.mean()), "ci": [low, high]}


def wins(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per prompt: 1 when `a` beats `b`, 0.5 on a tie, else 0."""
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _best_of_n_weights(picker: Sequence[float], n: int) -> list[float]:
    """P(sample i is the picker's choice among n drawn without replacement from these N), ties shared evenly.

    With samples sorted by the picker, the r-th lowest (from 0) is the highest of a random n-subset
    with probability C(r, n-1) / C(N, n); samples with equal picker scores share their ranks' mass.
    """
    size = len(picker)
    if not 1 <= n <= size:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {size} samples")
    order = sorted(range(size), key=picker.__getitem__)
    total = math.comb(size, n)
    weights = [0.0] * size
    start = 0
    while start < size:
        end = start
        while end + 1 < size and picker[order[end + 1]] == picker[order[start]]:
            end += 1
        mass = sum(math.comb(rank, n - 1) for rank in range(start, end + 1)) / total
        for rank in range(start, end + 1):
            weights[order[rank]] = mass / (end - start + 1)
        start = end + 1
    return weights


def best_of_n(picker: Sequence[float], value: Sequence[float], n: int) -> float:
    """E[value of the sample the picker ranks highest among n drawn without replacement from these N samples].

    Unbiased for best-of-n of the policy the N samples came from (Nakano et al. 2021).
    """
    if len(value) != len(picker):
        raise ValueError("best-of-n needs a value for every sample")
    return sum(w * v for w, v in zip(_best_of_n_weights(picker, n), value, strict=True))


def best_of_n_kl(n: int) -> float:
    """log n - (n - 1) / n nats: KL(best-of-n || the sampling policy) when no two samples are alike, an upper
    bound otherwise (Stiennon et al. 2020; Beirami et al. 2024)."""
    return math.log(n) - (n - 1) / n


def best_of_n_sample_kl(picker: Sequence[float], answers: Sequence[str], n: int) -> float:
    """KL(best-of-n || the policy) with the policy taken to be its N samples (equal answers one outcome).

    Best-of-n draws n of the N with replacement and keeps the picker's highest; an answer scored y
    is chosen with probability F(y)^n - F(y-)^n, F the samples' share scored at most y. Exact for that
    distribution, and at most `best_of_n_kl(n)`: short answers repeat, and then best-of-n moves the
    policy far less than the bound says (Beirami et al. 2024).
    """
    size = len(picker)
    share: dict[str, float] = {}
    for answer in answers:
        share[answer] = share.get(answer, 0.0) + 1 / size
    # An answer's score is its best sample's (the picker sees equal texts alike, up to rounding)
    score: dict[str, float] = {}
    for answer, value in zip(answers, picker, strict=True):
        score[answer] = max(score.get(answer, value), value)
    levels = sorted(set(score.values()))
    below, kl = 0.0, 0.0
    for level in levels:
        tied = [a for a in share if score[a] == level]
        mass = sum(share[a] for a in tied)
        chosen = (below + mass) ** n - below**n
        for answer in tied:
            p = chosen * share[answer] / mass
            if p > 0:
                kl += p * math.log(p / share[answer])
        below += mass
    return kl
