"""Runs under `accelerate launch`: CPU ranks, the main process's turn first, and a check that ranks agree."""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import gather


def use_cpu_ranks_without_gpu() -> None:
    """Ranks started by a launcher on a machine without CUDA train on the CPU over gloo.

    accelerate 1.15's multi-GPU launcher does not pass a config's `use_cpu: true` on to the ranks, and
    without it each rank trains alone; `ACCELERATE_USE_CPU` is what transformers and accelerate read.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def rank_divergence(model: torch.nn.Module) -> float:
    """The largest difference between any rank's per-parameter sums and the main rank's (0.0 in one process)."""
    state = PartialState()
    if state.num_processes == 1:
        return 0.0
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(state.device)
    ranks = gather(sums).view(state.num_processes, -1)
    return float((ranks - ranks[0]).abs().max())
