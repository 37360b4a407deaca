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


def interval(values: Sequence[float], seed: int = 0, resamples: int = RESAMPLES, level: float = LEVEL) -> dict:
    """The mean of per-prompt values and its percentile-bootstrap interval: {"mean", "ci": [low, high]}."""
    if not values:
        raise ValueError("an interval needs at least one value")
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


def best_of_n(picker: Sequence[float], value: Sequence[float], n: int) -> float:
    """E[value of the sample the picker ranks highest among n drawn without replacement from these N samples].

    Unbiased over all n-subsets: with samples sorted by the picker, the i-th lowest (from 1) is the
    best of a random subset with probability C(i-1, n-1) / C(N, n). Ties in the picker keep input order.
    """
    size = len(picker)
    if not 1 <= n <= size or len(value) != size:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {size} samples, each with a value")
    order = sorted(range(size), key=picker.__getitem__)
    total = math.comb(size, n)
    return sum(math.comb(rank, n - 1) / total * value[i] for rank, i in enumerate(order) if rank >= n - 1)


def best_of_n_kl(n: int) -> float:
    """KL(best-of-n || the sampling policy) in nats, log n - (n - 1) / n (Stiennon et al. 2020)."""
    return math.log(n) - (n - 1) / n
