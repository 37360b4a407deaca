"""Noisy Bradley-Terry labelers and the Bayes-optimal accuracy of their labels.

A labeler prefers response a to b with probability sigmoid((g(a) - g(b)) / T), g the gold score and T
the temperature (label noise). Ranking K responses by g / T plus Gumbel noise (Plackett-Luce) gives
exactly these pairwise probabilities, so a ranked list is as noisy as the pairs it expands to.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

DEFAULT_TEMPERATURE = 0.1


def preference_probability(gold_a: float, gold_b: float, temperature: float = DEFAULT_TEMPERATURE) -> float:
    """P(a is preferred to b) under the Bradley-Terry labeler."""
    if temperature <= 0:
        return 1.0 if gold_a > gold_b else 0.0 if gold_a < gold_b else 0.5
    return 1.0 / (1.0 + math.exp(-(gold_a - gold_b) / temperature))


def bayes_accuracy(gold_pairs: Sequence[tuple[float, float]], temperature: float = DEFAULT_TEMPERATURE) -> float:
    """Expected accuracy of the best possible predictor on noisy labels of these pairs: E[max(p, 1 - p)]."""
    if not gold_pairs:
        raise ValueError("bayes_accuracy needs at least one pair")
    total = 0.0
    for gold_a, gold_b in gold_pairs:
        p = preference_probability(gold_a, gold_b, temperature)
        total += max(p, 1.0 - p)
    return total / len(gold_pairs)


class Labeler:
    """A noisy human stand-in with its own random stream."""

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, seed: int = 0) -> None:
        if temperature < 0:
            raise ValueError(f"labeler temperature must be >= 0, got {temperature}")
        self.temperature = temperature
        self.rng = random.Random(seed)

    def prefers_first(self, gold_a: float, gold_b: float) -> bool:
        """One pairwise judgement: True when a is preferred to b."""
        return self.rng.random() < preference_probability(gold_a, gold_b, self.temperature)

    def rank(self, golds: Sequence[float]) -> list[int]:
        """Indices of the responses, best first (Plackett-Luce with Gumbel noise)."""
        if self.temperature == 0:
            return sorted(range(len(golds)), key=lambda i: -golds[i])
        utilities = [g / self.temperature - math.log(-math.log(self.rng.random() or 1e-300)) for g in golds]
        return sorted(range(len(golds)), key=lambda i: -utilities[i])
