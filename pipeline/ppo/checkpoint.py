"""PPO checkpoints: everything a resumed run needs to continue as if it had never stopped.

accelerate's `save_state` writes the trained weights, the optimiser and scheduler and each rank's
RNG states, in whatever form the run's sharding needs (DDP, DeepSpeed ZeRO, FSDP); `trainer_state.pt`
adds the step, the KL controller, the data positions and each rank's sampling generator. A
checkpoint is written as `tmp-checkpoint-N/` and renamed to `checkpoint-N/` when complete, so a run
killed while saving leaves the previous checkpoint as the newest complete one. At the end of a run,
`save_policy` writes the policy the stage publishes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from pipeline import outputs


def keep_trainable_weights(accelerator: Accelerator) -> None:
    """Checkpoints hold the weights an optimiser changes (all of a full model; adapter and head of a LoRA one)."""

    def drop_frozen(models: list[torch.nn.Module], weights: list[dict[str, torch.Tensor]], _: str) -> None:
        for model, state in zip(models, weights, strict=False):  # DeepSpeed (`save`) and FSDP pass no weights
            trainable = {name for name, p in model.named_parameters() if p.requires_grad}
            for name in set(state) - trainable:
                del state[name]

    accelerator.register_save_state_pre_hook(drop_frozen)


def save(work: Path, step: int, accelerator: Accelerator, state: dict[str, Any]) -> Path:
    """Write checkpoint-`step` atomically and drop the older ones (every rank calls this)."""
    tmp, final = work / f"tmp-checkpoint-{step}", work / f"checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    # DeepSpeed's engine writes every weight unless told; our hook drops the frozen ones under other engines
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    accelerator.save_state(str(tmp), **({"exclude_frozen_parameters": True} if deepspeed else {}))
    if accelerator.is_main_process:
        torch.save(state, tmp / outputs.PPO_STATE_FILE)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tmp.rename(final)
        for older in work.glob("checkpoint-*"):
            if older != final:
                shutil.rmtree(older)
    accelerator.wait_for_everyone()
    return final


def trainer_state(folder: Path) -> dict[str, Any]:
    """The trainer state a checkpoint holds (tensors and plain values only: no pickled objects)."""
    return torch.load(folder / outputs.PPO_STATE_FILE, weights_only=True)


def load(folder: Path, accelerator: Accelerator) -> None:
    """Load weights, optimiser, scheduler and RNG states into the prepared objects."""
    # The frozen weights are not in the checkpoint; DeepSpeed's engine names the argument differently
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.load_state(str(folder), load_module_strict=False)
    else:
        accelerator.load_state(str(folder), strict=False)


def save_policy(
    accelerator: Accelerator,
    trained: torch.nn.Module,
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    work: Path,
) -> None:
    """The trained policy (its adapter, with LoRA) and its tokenizer into `work`; every rank calls this, as
    ZeRO-3 and FSDP gather the weights from every rank."""
    state_dict = accelerator.get_state_dict(trained)  # gathered on the main process
    if accelerator.is_main_process:
        weights = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        policy.save_pretrained(str(work), state_dict=weights)
        tokenizer.save_pretrained(str(work))
