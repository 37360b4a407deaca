"""The precision policy: `bf16: auto` computes in bf16 where the hardware does it fast, fp32 elsewhere.

Under bf16, the matmuls run under autocast; weights nobody trains (a LoRA base, PPO's reward model,
the policies label and eval sample from) are held in bf16, and what is trained (full weights,
adapters, heads) and the optimiser state stay fp32. On a CPU without AVX512-BF16 or AMX, bf16 is
emulated and a step was about 14x slower than fp32: `auto` keeps fp32 there.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel

from pipeline.distributed import requested_engine

logger = logging.getLogger(__name__)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The CPU's instruction sets that compute bf16 natively (Linux's /proc/cpuinfo flags)."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


def fast_bf16(on_cpu: bool) -> tuple[bool, str]:
    """Whether the run's device (this machine's GPU, or its CPU) computes bf16 fast, and why."""
    if not on_cpu:
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} supports bf16"
        return False, f"{name} has no native bf16"
    flags = cpu_bf16_flags()
    if flags:
        return True, f"this CPU has {' and '.join(flag.upper().replace('_', '-') for flag in flags)}"
    return False, "this CPU has neither AVX512-BF16 nor AMX, so bf16 would be emulated"


def pick_bf16(on_cpu: bool, sharded_on_cpu: bool = False) -> bool:
    """What `bf16: auto` means for a run on this machine's CPU or GPU, said in one log line."""
    fast, why = fast_bf16(on_cpu)
    if fast and sharded_on_cpu:
        # transformers takes bf16 without a GPU only with use_cpu, and with use_cpu accelerate skips DeepSpeed
        fast, why = False, "DeepSpeed on CPU ranks cannot take bf16 here"
    logger.info("precision: %s (bf16: auto; %s)", "bf16" if fast else "fp32", why)
    return fast


def resolve_auto(values: dict, trainer: bool) -> None:
    """Replace a recipe's `bf16: auto` by what `pick_bf16` picks.

    `trainer`: the values build TrainingArguments for a run on this machine's device; otherwise the
    models stay on the CPU (label), which decides.
    """
    if values.get("bf16") != "auto":
        return
    on_cpu = not trainer or bool(values.get("use_cpu")) or not torch.cuda.is_available()
    values["bf16"] = pick_bf16(on_cpu, sharded_on_cpu=trainer and on_cpu and requested_engine() is not None)
    if values["bf16"] and on_cpu and trainer:
        values["use_cpu"] = True  # transformers takes bf16 without a GPU only when told the run is on the CPU


def _applies(model: PreTrainedModel) -> bool:
    # 4/8-bit weights follow QLoRA's recipe (TRL's); under DeepSpeed or FSDP weights stay as the engine holds them
    return getattr(model, "hf_quantizer", None) is None and requested_engine() is None


def hold_frozen(model: PreTrainedModel, bf16: bool) -> PreTrainedModel:
    """Weights nobody trains (a LoRA base, a reward model), in bf16 when the run computes in bf16."""
    if bf16 and _applies(model):
        model.to(torch.bfloat16)
    return model


def trainable_in_fp32(model: PreTrainedModel, bf16: bool) -> PreTrainedModel:
    """What is trained on a base `hold_frozen` made bf16 (adapters, a copied score head) in fp32, with its updates
    and optimiser state."""
    if bf16 and _applies(model):
        for param in model.parameters():
            if param.requires_grad and param.dtype == torch.bfloat16:
                param.data = param.data.float()
    return model
