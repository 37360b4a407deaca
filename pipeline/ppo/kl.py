"""KL coefficient controllers: fixed, or adaptive towards a target KL (Ziegler et al. 2019)."""

from __future__ import annotations


class FixedKLController:
    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, num_episodes: int) -> None:
        """A fixed coefficient ignores the measured KL."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """beta <- beta * (1 + clip(KL / target - 1, -0.2, 0.2) * n / horizon), after each batch of n episodes."""

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, num_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_episodes / self.horizon
