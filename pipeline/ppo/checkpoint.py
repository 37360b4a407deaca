"""PPO checkpoints: everything a resumed run needs to continue as if it had never stopped.

A checkpoint is written as `tmp-checkpoint-N/` and renamed to `checkpoint-N/` when complete, so a
run killed while saving leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline.configs import PipelineError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters an optimiser changes (all of a full model; adapter and head of a LoRA one)."""
    return {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, path: Path) -> None:
    tensors = load_file(str(path))
    expected = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing = sorted(expected - set(tensors))[:3]
        raise PipelineError(f"{path} does not match the model being trained (missing e.g. {missing}); delete it")
    model.load_state_dict(tensors, strict=False)


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def save(
    work: Path,
    step: int,
    policy: torch.nn.Module,
    value_model: torch.nn.Module,
    state: dict[str, Any],
) -> Path:
    """Write checkpoint-`step` atomically and drop the older ones."""
    tmp = work / f"tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(policy), str(tmp / "policy.safetensors"))
    save_file(trainable_state(value_model), str(tmp / "value.safetensors"))
    torch.save(state, tmp / "trainer_state.pt")
    final = work / f"checkpoint-{step}"
    tmp.rename(final)
    for older in work.glob("checkpoint-*"):
        if older != final:
            shutil.rmtree(older)
    return final


def latest(work: Path) -> tuple[int, Path] | None:
    """(step, folder) of the newest complete checkpoint in `work`; unfinished ones are removed."""
    for tmp in work.glob("tmp-checkpoint-*"):
        shutil.rmtree(tmp)
    found = [(int(m.group(1)), p) for p in work.iterdir() if (m := _CHECKPOINT.match(p.name))]
    return max(found) if found else None


def load(folder: Path, policy: torch.nn.Module, value_model: torch.nn.Module) -> dict[str, Any]:
    """Load the weights into the models and return the trainer state (optimisers, schedulers, RNG, position)."""
    load_trainable_state(policy, folder / "policy.safetensors")
    load_trainable_state(value_model, folder / "value.safetensors")
    return torch.load(folder / "trainer_state.pt", weights_only=True)
