"""PPO's math against hand-computed values and a plain-loop reference."""

import math

import pytest
import torch

from pipeline.ppo.core import (
    explained_variance,
    gae,
    kl_estimate,
    masked_mean,
    masked_whiten,
    policy_loss,
    shape_rewards,
    value_loss,
)
from pipeline.ppo.kl import AdaptiveKLController, FixedKLController
from pipeline.scoring import entropy_from_logits, response_mask


def close(actual: torch.Tensor, expected: list, atol: float = 1e-6) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected), atol=atol, rtol=1e-5)


def test_masked_mean_and_whiten_ignore_padding():
    values = torch.tensor([[1.0, 3.0, 100.0], [5.0, -100.0, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(values, mask).item() == pytest.approx(3.0)
    assert masked_mean(values, mask, dim=1).tolist() == pytest.approx([2.0, 5.0])
    whitened = masked_whiten(values, mask)
    # mean 3, unbiased variance ((-2)^2 + 0 + 2^2) / 2 = 4: (1, 3, 5) -> (-1, 0, 1); padding stays 0
    close(whitened, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    kept_mean = masked_whiten(values, mask, shift_mean=False)
    assert kept_mean[0, :2].tolist() == pytest.approx([2.0, 3.0], abs=1e-6)


def test_kl_estimators():
    logprobs, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])
    assert kl_estimate(logprobs, ref, "k1").tolist() == pytest.approx([1.0, 0.0])
    # k3 = (q/p - 1) - log(q/p), q/p = e^-1 for the first token
    assert kl_estimate(logprobs, ref, "k3").tolist() == pytest.approx([math.exp(-1) - 1 + 1, 0.0])
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_estimate(logprobs, ref, "k2")


def test_shaped_rewards_put_the_score_on_the_last_response_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    finished = torch.tensor([True, False])
    rewards, non_score, scores = shape_rewards(torch.tensor([1.0, 2.0]), kl, mask, 0.5, finished)
    close(rewards, [[-0.05, 0.9, 0.0], [-0.2, -0.25, 1.7]])
    close(non_score, [[-0.05, -0.1, 0.0], [-0.2, -0.25, -0.3]])
    close(scores, [1.0, 2.0])


def test_a_response_without_eos_loses_the_penalty_at_its_last_token():
    kl = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    finished = torch.tensor([True, False])
    rewards, _, scores = shape_rewards(torch.tensor([1.0, 2.0]), kl, mask, 0.5, finished, missing_eos_penalty=1.5)
    close(scores, [1.0, 0.5])
    close(rewards, [[0.0, 1.0, 0.0], [0.0, 0.0, 0.5]])


def _gae_reference(rewards, values, gamma, lam):
    """GAE as written in the paper, one row, plain Python."""
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages


def test_gae_hand_computed():
    rewards, values = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]])
    advantages, returns = gae(rewards, values, torch.ones(1, 2), gamma=1.0, lam=1.0)
    # delta_1 = 1 - 0.2 = 0.8; delta_0 = 0 + 0.2 - 0.5 = -0.3; A_0 = -0.3 + 0.8
    close(advantages, [[0.5, 0.8]])
    close(returns, [[1.0, 1.0]])
    advantages, _ = gae(rewards, values, torch.ones(1, 2), gamma=0.9, lam=0.5)
    # delta_0 = 0.9 * 0.2 - 0.5 = -0.32; A_0 = -0.32 + 0.9 * 0.5 * 0.8
    close(advantages, [[0.04, 0.8]])


def test_gae_matches_the_plain_loop_and_stops_at_the_mask():
    torch.manual_seed(0)
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)
    lengths = [7, 5, 1, 3]
    mask = torch.tensor([[1.0] * n + [0.0] * (7 - n) for n in lengths])
    advantages, returns = gae(rewards, values, mask, gamma=0.99, lam=0.9)
    for row, n in enumerate(lengths):
        expected = _gae_reference(rewards[row, :n].tolist(), values[row, :n].tolist(), 0.99, 0.9)
        assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-5)
        assert advantages[row, n:].abs().sum() == 0
        assert returns[row, :n].tolist() == pytest.approx((advantages[row, :n] + values[row, :n]).tolist(), abs=1e-5)


def test_policy_loss_clips_in_the_direction_of_the_advantage():
    old = torch.zeros(1, 2)
    new = torch.full((1, 2), 0.5)  # ratio e^0.5 = 1.6487 > 1 + 0.2
    mask = torch.ones(1, 2)
    loss, stats = policy_loss(new, old, torch.tensor([[1.0, -1.0]]), mask, cliprange=0.2)
    # advantage +1: max(-1.6487, -1.2) = -1.2 (clipped); advantage -1: max(1.6487, 1.2) = 1.6487 (not)
    assert loss.item() == pytest.approx((-1.2 + math.exp(0.5)) / 2)
    assert stats["policy/clipfrac_avg"].item() == pytest.approx(0.5)
    assert stats["policy/approxkl"].item() == pytest.approx(0.5 * 0.25)
    same, stats = policy_loss(old, old, torch.tensor([[1.0, -1.0]]), mask, cliprange=0.2)
    assert same.item() == pytest.approx(0.0) and stats["policy/clipfrac_avg"].item() == 0
    assert stats["policy/ratio_mean"].item() == stats["policy/ratio_max"].item() == 1.0


def test_ratio_statistics_skip_padding():
    new = torch.tensor([[0.5, -0.5, 3.0]])  # the last token is padding
    _, stats = policy_loss(new, torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([[1.0, 1.0, 0.0]]), cliprange=0.2)
    assert stats["policy/ratio_mean"].item() == pytest.approx((math.exp(0.5) + math.exp(-0.5)) / 2)
    assert stats["policy/ratio_max"].item() == pytest.approx(math.exp(0.5))


def test_explained_variance_by_hand():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 9.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(returns, returns, mask) == 1.0
    assert explained_variance(torch.full((1, 4), 2.0), returns, mask) == pytest.approx(0.0)
    # errors (0, 1, -1): variance 1 against the returns' variance 1
    assert explained_variance(torch.tensor([[1.0, 1.0, 4.0, 0.0]]), returns, mask) == pytest.approx(0.0)
    # errors (0.5, 0.5, 0.5): a constant offset costs nothing
    assert explained_variance(returns - 0.5, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 4), torch.ones(1, 4), torch.ones(1, 4)) == 0.0


def test_value_loss_clips_around_the_old_value():
    loss, stats = value_loss(torch.ones(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    # unclipped error 0, clipped value 0.2 -> error 0.64; the max is taken: 0.5 * 0.64
    assert loss.item() == pytest.approx(0.32)
    assert stats["val/clipfrac_avg"].item() == 1.0
    loss, _ = value_loss(torch.tensor([[0.1]]), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    assert loss.item() == pytest.approx(0.5 * 0.81)


def test_response_mask_keeps_the_stop_token():
    responses = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    assert response_mask(responses, 2).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert response_mask(responses, None).sum() == 12


def test_entropy_of_uniform_and_certain_distributions():
    entropy = entropy_from_logits(torch.tensor([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]]))
    assert entropy.tolist() == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_adaptive_kl_controller_moves_towards_the_target_and_clips_the_error():
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(12.0, 100)  # error 1.0, clipped to 0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    controller = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    controller.update(6.6, 100)  # error 0.1
    assert controller.value == pytest.approx(0.1 * (1 + 0.1 * 0.01))
    controller.update(0.0, 1000)  # error -1, clipped to -0.2
    assert controller.value == pytest.approx(0.1 * 1.001 * (1 - 0.2 * 0.1))
    restored = AdaptiveKLController(0.5, target=6.0, horizon=10000)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == controller.value
    fixed = FixedKLController(0.2)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.2
