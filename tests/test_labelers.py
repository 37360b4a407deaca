import math

import pytest

from pipeline.sandbox import Labeler, bayes_accuracy, preference_probability


def test_preference_probability_is_bradley_terry():
    assert preference_probability(0.6, 0.4, temperature=0.1) == pytest.approx(1 / (1 + math.exp(-2)))
    assert preference_probability(0.5, 0.5) == 0.5
    assert preference_probability(0.9, 0.1, temperature=0) == 1.0


def test_bayes_accuracy_hand_computed():
    # p = sigmoid(2) = 0.8808 for the first pair, 0.5 for the tie, sigmoid(1) = 0.7311 (mirrored) for the third
    pairs = [(0.6, 0.4), (0.5, 0.5), (0.3, 0.4)]
    expected = (1 / (1 + math.exp(-2)) + 0.5 + 1 / (1 + math.exp(-1))) / 3
    assert bayes_accuracy(pairs, temperature=0.1) == pytest.approx(expected)
    assert bayes_accuracy([(1.0, 0.0)], temperature=0) == 1.0


def test_bayes_accuracy_needs_pairs():
    with pytest.raises(ValueError):
        bayes_accuracy([])


def test_labeler_frequency_matches_probability():
    labeler = Labeler(temperature=0.1, seed=3)
    wins = sum(labeler.prefers_first(0.6, 0.5) for _ in range(20000))
    assert wins / 20000 == pytest.approx(preference_probability(0.6, 0.5, 0.1), abs=0.015)


def test_ranking_marginals_are_the_pairwise_probabilities():
    # Plackett-Luce with Gumbel noise: P(a above b) in a ranking equals the Bradley-Terry probability
    labeler = Labeler(temperature=0.1, seed=4)
    golds = [0.5, 0.6, 0.3, 0.55]
    n, above = 20000, 0
    for _ in range(n):
        order = labeler.rank(golds)
        above += order.index(1) < order.index(0)
    assert above / n == pytest.approx(preference_probability(0.6, 0.5, 0.1), abs=0.015)


def test_noise_free_labeler_ranks_by_gold():
    assert Labeler(temperature=0).rank([0.2, 0.9, 0.5]) == [1, 2, 0]
    with pytest.raises(ValueError):
        Labeler(temperature=-1)
