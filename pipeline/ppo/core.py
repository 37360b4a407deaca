"""PPO's math as pure tensor functions: KL estimators, GAE, masked whitening, clipped losses.

Shapes: (batch, response_length) for every per-token tensor; `mask` is 1 on response tokens (up to
and including the stop token) and 0 on the padding after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

# Sums a tensor over the ranks of a multi-process run (accelerate's `reduce(tensor, "sum")`).
Reduce = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over `dim`, or over everything)."""
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_mean_var(
    values: torch.Tensor, mask: torch.Tensor, reduce: Reduce | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of `values` where `mask` is 1.

    `reduce` sums a tensor over the ranks of a multi-process run, so that every rank gets the statistics
    of the whole batch; without it they are this batch's own.
    """
    reduce = reduce or (lambda tensor: tensor)
    count = reduce(mask.sum())
    mean = reduce((values * mask).sum()) / count.clamp(min=1)
    centered = (values - mean) * mask
    return mean, reduce(centered.square().sum()) / (count - 1).clamp(min=1)


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, reduce: Reduce | None = None
) -> torch.Tensor:
    """`values` scaled to unit variance over the mask (and centred unless `shift_mean` is false)."""
    mean, var = masked_mean_var(values, mask, reduce)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: Literal["k1", "k3"]) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from log-probs of tokens sampled from the policy.

    k1 = log p - log q (unbiased, can be negative); k3 = (r - 1) - log r with r = q / p (unbiased,
    never negative, lower variance). Schulman, "Approximating KL divergence", 2020.
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


def shape_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    finished: torch.Tensor,
    missing_eos_penalty: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rewards, non-score rewards, scores): PPO's per-token reward of each response.

    -kl_coef * KL on every response token, and at the last one the sequence's score, less
    `missing_eos_penalty` when the response did not finish (TRL's rule). The scores returned are those credited.
    """
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~finished).float()
    non_score = -kl_coef * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards = non_score.clone()
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, non_score, scores


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) by generalised advantage estimation; the value after the last token is 0."""
    values, rewards = values * mask, rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(returns - values) / Var(returns) over the response tokens: 1 when the value model predicts the
    returns, 0 when it does no better than their mean, below 0 when worse."""
    _, returns_variance = masked_mean_var(returns, mask)
    if returns_variance == 0:
        return 0.0
    return float(1 - masked_mean_var(returns - values, mask)[1] / returns_variance)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate loss, with its clip fraction and the approximate KL to the old policy."""
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    stats = {
        "policy/clipfrac_avg": masked_mean((clipped > unclipped).float(), mask),
        "policy/approxkl": 0.5 * masked_mean(log_ratio.square(), mask),
        "policy/ratio_mean": masked_mean(ratio, mask),
        "policy/ratio_max": (ratio * mask).max(),
    }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v) - R)^2), with its clip fraction."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    unclipped_error, clipped_error = (values - returns).square(), (clipped - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, {"val/clipfrac_avg": masked_mean((clipped_error > unclipped_error).float(), mask)}
