"""Error bars over prompts and best-of-n, against values worked out by hand or by enumeration."""

import itertools
import math
import random
from statistics import mean

import pytest

from pipeline.intervals import MIN_VALUES, best_of_n, best_of_n_kl, best_of_n_sample_kl, differences, interval, wins


def test_interval_of_constant_values_has_no_width_and_a_mean_inside():
    assert interval([0.25] * 10) == {"mean": 0.25, "ci": [0.25, 0.25]}
    found = interval([0.0, 1.0, 0.0, 1.0, 1.0] * 2, seed=3)
    assert found["mean"] == 0.6 and 0.0 <= found["ci"][0] < 0.6 < found["ci"][1] <= 1.0


def test_fewer_values_than_an_interval_needs_give_the_mean_alone():
    assert interval([0.0, 1.0, 1.0]) == {"mean": 2 / 3, "ci": None}
    assert interval([0.5] * (MIN_VALUES - 1))["ci"] is None and interval([0.5] * MIN_VALUES)["ci"] == [0.5, 0.5]


def test_interval_half_width_matches_the_normal_approximation():
    rng = random.Random(0)
    values = [rng.gauss(0.0, 0.3) for _ in range(2000)]
    low, high = interval(values)["ci"]
    standard_error = (sum((v - mean(values)) ** 2 for v in values) / (len(values) - 1)) ** 0.5 / len(values) ** 0.5
    assert (high - low) / 2 == pytest.approx(1.96 * standard_error, rel=0.1)


def test_wins_and_differences_are_per_prompt():
    assert wins([1, 0.5, 0.2], [0.5, 0.5, 0.3]) == [1.0, 0.5, 0.0]
    assert differences([1, 0.5], [0.25, 0.5]) == [0.75, 0.0]
    with pytest.raises(ValueError):
        wins([1], [1, 2])


def test_best_of_n_is_the_mean_over_every_subset_of_its_best_member():
    picker = [0.3, -1.0, 2.0, 0.7, 0.1]
    value = [0.2, 0.9, 0.4, 1.0, 0.0]
    for n in range(1, 6):
        subsets = list(itertools.combinations(range(5), n))
        expected = mean(value[max(s, key=picker.__getitem__)] for s in subsets)
        assert best_of_n(picker, value, n) == pytest.approx(expected)
    assert best_of_n(picker, value, 1) == pytest.approx(mean(value))
    assert best_of_n(picker, value, 5) == 0.4  # the picker's favourite
    with pytest.raises(ValueError):
        best_of_n(picker, value, 6)


def test_best_of_n_kl_by_hand():
    assert best_of_n_kl(1) == 0
    assert best_of_n_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl(16) == pytest.approx(2.7726 - 0.9375, abs=1e-4)


def test_best_of_n_shares_a_tie_between_the_tied_samples():
    # the picker cannot tell the four apart: any of them is its pick, so the value is the plain mean
    assert best_of_n([1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 0.0, 1.0], 2) == pytest.approx(0.5)
    # two tied at the top: best-of-4 takes either with probability 1/2
    assert best_of_n([0.0, 3.0, 3.0, 1.0], [9.0, 1.0, 0.0, 9.0], 4) == pytest.approx(0.5)


def test_best_of_n_sample_kl_by_hand():
    # four distinct answers: best-of-2 with replacement picks the i-th lowest with ((i/4)^2 - ((i-1)/4)^2)
    chosen = [1 / 16, 3 / 16, 5 / 16, 7 / 16]
    expected = sum(p * math.log(p / 0.25) for p in chosen)
    assert best_of_n_sample_kl([0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"], 2) == pytest.approx(expected)
    assert expected < best_of_n_kl(2)
    # one answer four times: best-of-n changes nothing
    assert best_of_n_sample_kl([0.5, 0.5, 0.5, 0.5], ["x"] * 4, 4) == 0
    # "x" twice (the top score), "y" and "z" once: x is chosen with 1 - (1/2)^2 = 3/4
    p = {"x": 0.75, "y": (0.5**2 - 0.25**2), "z": 0.25**2}
    base = {"x": 0.5, "y": 0.25, "z": 0.25}
    found = best_of_n_sample_kl([0.9, 0.2, 0.9, 0.1], ["x", "y", "x", "z"], 2)
    assert found == pytest.approx(sum(p[a] * math.log(p[a] / base[a]) for a in p))
