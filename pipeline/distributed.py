"""Runs under `accelerate launch`: CPU ranks, a check that ranks agree, sharded weights, work split over ranks."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, gather, gather_object


def use_cpu_ranks_without_gpu() -> None:
    """Ranks started by a launcher on a machine without CUDA train on the CPU over gloo.

    accelerate 1.15's multi-GPU launcher does not pass a config's `use_cpu: true` on to the ranks, and
    without it each rank trains alone; `ACCELERATE_USE_CPU` is what transformers and accelerate read.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def end_ranks() -> None:
    """After a stage succeeds: every rank reaches the end, then the process group closes.

    A rank that exits while another still talks to it over gloo can abort the other one
    ("terminate called without an active exception"), so no rank leaves first.
    """
    state = PartialState()
    if state.num_processes > 1 and torch.distributed.is_initialized():  # PPO's end_training closed it already
        state.wait_for_everyone()
        state.destroy_process_group()


def rank_divergence(model: torch.nn.Module) -> float:
    """The largest difference between any rank's per-parameter sums and the main rank's (0.0 in one process)."""
    state = PartialState()
    if state.num_processes == 1:
        return 0.0
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(state.device)
    ranks = gather(sums).view(state.num_processes, -1)
    return float((ranks - ranks[0]).abs().max())


def weights_are_sharded(accelerator: Accelerator) -> bool:
    """Whether each rank holds only part of the weights (ZeRO-3, FSDP): then every forward pass is collective."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = accelerator.state.deepspeed_plugin
    return accelerator.distributed_type == DistributedType.DEEPSPEED and plugin.zero_stage == 3


def shard(items: list) -> tuple[list, int]:
    """This rank's contiguous share of `items`, padded to the same length on every rank, and how many are real.

    Equal lengths keep the ranks' collective forward passes in step; `gather_shards` drops the padding.
    """
    state = PartialState()
    size = -(-len(items) // state.num_processes)
    mine = items[state.process_index * size : (state.process_index + 1) * size]
    return mine + [items[-1]] * (size - len(mine)), len(mine)


def gather_shards(results: list, real: int) -> list:
    """Every rank's real results of `shard`, in the order of the items they came from."""
    return gather_object(results[:real])
