"""Runs under `accelerate launch`: CPU ranks, a check that ranks agree, sharded weights, work split over ranks."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import accelerate
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, gather, gather_object
from torch.distributed.fsdp import FSDPModule
from transformers import TrainingArguments
from trl.models.utils import prepare_deepspeed

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

CPU_BACKEND = "gloo"
ENGINES = {"ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED, "ACCELERATE_USE_FSDP": DistributedType.FSDP}


def cpu_ranks() -> bool:
    """Whether this process is one of several ranks on a machine without CUDA."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def requested_engine() -> DistributedType | None:
    """The sharding engine the launcher's config names (accelerate passes it on as an environment flag)."""
    named = [engine for flag, engine in ENGINES.items() if os.environ.get(flag, "false").lower() == "true"]
    return named[0] if named else None


def start_ranks() -> None:
    """Ranks that a launcher started on a machine without CUDA: on the CPU over gloo, in the engine asked for.

    accelerate 1.15's multi-GPU launcher does not pass a config's `use_cpu: true` on to the ranks, and
    without it each rank trains alone: data-parallel ranks set `ACCELERATE_USE_CPU`, which transformers
    and accelerate read. DeepSpeed runs on its own CPU accelerator once the process group is gloo; it must
    not see `ACCELERATE_USE_CPU`, which would quietly turn it into data parallelism. accelerate enables
    FSDP only on GPU-type devices, so FSDP on CPU ranks stops here instead of running data-parallel.
    """
    if not cpu_ranks():
        return
    engine = requested_engine()
    if engine is None:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        return
    state = PartialState(backend=CPU_BACKEND)
    if engine == DistributedType.FSDP and state.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU):
        raise PipelineError(
            f"the accelerate config asks for FSDP, which accelerate {accelerate.__version__} runs only on GPUs; "
            "this machine has none: on CPUs use recipes/accelerate_configs/zero3.yaml (DeepSpeed ZeRO-3 "
            "shards the weights too), zero2.yaml or multi_cpu.yaml"
        )


def use_recipe_precision(configs: tuple) -> bool:
    """Whether a launcher's `mixed_precision` differed from the recipe's `bf16`/`fp16`; the recipe's is now set.

    transformers reads the launcher's value as it builds its arguments, takes it when the recipe's
    `bf16` is off, and DeepSpeed stops at the mismatch: the arguments are built again after a change.
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    for config in configs:
        if isinstance(config, TrainingArguments):
            precision = "bf16" if config.bf16 else "fp16" if config.fp16 else "no"
            if launcher in (None, precision):
                return False
            os.environ["ACCELERATE_MIXED_PRECISION"] = precision
            if int(os.environ.get("RANK", "0")) == 0:
                logger.warning("mixed precision %s, as the recipe says (the launcher's: %s)", precision, launcher)
            return True
    return False


def engine(accelerator: Accelerator) -> str:
    """The engine a run trains with, as metrics.json records it: e.g. DEEPSPEED ZeRO-3, FSDP2, MULTI_CPU."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return f"DEEPSPEED ZeRO-{accelerator.state.deepspeed_plugin.zero_stage}"
    if kind == DistributedType.FSDP:
        return f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    return kind.value


def num_machines() -> int:
    """How many machines the run's processes are on, from the launcher's (torchrun's) world sizes."""
    processes, here = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(processes // max(here, 1), 1)


def require_engine(accelerator: Accelerator) -> None:
    """Stops a run whose accelerator fell back from the engine its config names (a silent change of memory plan)."""
    asked = requested_engine()
    if asked is not None and accelerator.distributed_type != asked:
        raise PipelineError(
            f"the accelerate config asks for {asked.value} but accelerate set up {engine(accelerator)} "
            "on this machine: check the config and the installed deepspeed"
        )


def end_ranks() -> None:
    """After a stage succeeds: every rank reaches the end, then the process group closes.

    A rank that exits while another still talks to it over gloo can abort the other one
    ("terminate called without an active exception"), so no rank leaves first.
    """
    state = PartialState()
    if state.num_processes > 1 and torch.distributed.is_initialized():  # PPO's end_training closed it already
        state.wait_for_everyone()
        state.destroy_process_group()


def rank_divergence(accelerator: Accelerator, model: torch.nn.Module) -> float | None:
    """The largest difference between any rank's per-parameter sums and the main rank's; None in one process,
    or where the weights are sharded (ZeRO-3, FSDP) and the ranks hold one copy between them."""
    if accelerator.num_processes == 1 or weights_are_sharded(accelerator):
        return None
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(accelerator.device)
    ranks = gather(sums).view(accelerator.num_processes, -1)
    return float((ranks - ranks[0]).abs().max())


def fill_deepspeed_config(accelerator: Accelerator, micro_batch: int, max_grad_norm: float | None) -> None:
    """DeepSpeed's "auto" values for a loop without a dataloader: accelerate reads the micro-batch from a
    prepared dataloader (PPO prepares none) and would clip at its own 1.0, not the recipe's max_grad_norm."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    if config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        config["train_micro_batch_size_per_gpu"] = micro_batch
    if config.get("gradient_clipping", "auto") == "auto":
        config["gradient_clipping"] = max_grad_norm or 0.0


def prepare_frozen(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """A model that only scores (a reference policy, a reward model), placed for the run's engine.

    Under ZeRO-3 transformers loads it partitioned like the trained models, and TRL's `prepare_deepspeed`
    wraps it in an inference engine that gathers each layer's weights for its forward pass (under ZeRO-1
    and 2 the engine holds a whole copy); elsewhere each rank holds a whole copy on its device.
    """
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return prepare_deepspeed(model, accelerator)
    return model.to(accelerator.device)


def local_part(param: torch.Tensor) -> torch.Tensor:
    """This rank's part of a weight: ZeRO-3's partition, FSDP2's shard, or the whole weight."""
    if hasattr(param, "ds_tensor"):
        return param.ds_tensor
    return param.to_local() if hasattr(param, "to_local") else param


def scalar(value: float | torch.Tensor, device: torch.device) -> torch.Tensor:
    """A number that an engine returns, as a plain tensor: DeepSpeed's norms are floats, FSDP2's DTensors."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return torch.as_tensor(value, dtype=torch.float32, device=device)


def start_sharded_root(model: torch.nn.Module) -> None:
    """Marks a prepared FSDP2 model as the root of its units before any part of it runs alone.

    FSDP2 sets its root up in the root's first forward; a decoder layer called first (a rollout samples
    through the policy alone) would take itself for the root, and the training forward would then fail.
    """
    if isinstance(model, FSDPModule):
        model._get_fsdp_state()._lazy_init()  # torch 2.13's FSDP2: what the root's first forward calls
        units = sum(isinstance(m, FSDPModule) for m in model.modules())
        logger.info("FSDP2: %d units (a root and one per decoder layer)", units)


@contextmanager
def root_gathered(model: torch.nn.Module) -> Iterator[None]:
    """For calls into parts of a prepared model (the policy alone, the value model alone), not its forward.

    FSDP2 gathers a unit's weights in that unit's forward: the decoder layers are units and gather
    themselves, but the root's own weights (embeddings, final norm, heads) only in the root's forward.
    Every rank enters it the same number of times (the unshard is collective).
    """
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def gathered_for_edit(params: list[torch.nn.Parameter]) -> AbstractContextManager:
    """Whole parameters to edit in place: ZeRO-3 loading (`zero.Init`) leaves each rank a part of them."""
    if not any(hasattr(p, "ds_numel") for p in params):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=0)


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
