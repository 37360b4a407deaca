"""`python -m tests.fsdp_on_cpu MODULE ARGS...`: runs MODULE as `python -m` would, with FSDP open to CPU ranks.

A helper for the FSDP2 tests (not a test module), written against accelerate 1.15.0. accelerate turns
FSDP on only when a rank's device is GPU-like (`AcceleratorState.__init__` checks for MULTI_GPU and its
kin), though PyTorch's FSDP2 itself runs on CPU tensors over gloo. The shim reports CPU ranks as
MULTI_GPU on the device `cpu`, so the code path that GPU users take runs here; every other line is
accelerate's and ours unchanged.
"""

import os
import runpy
import sys

import accelerate
from accelerate import PartialState
from accelerate.utils import DistributedType

WRITTEN_FOR = "1.15.0"


def open_fsdp_to_cpu_ranks() -> None:
    if accelerate.__version__ != WRITTEN_FOR:
        raise RuntimeError(f"tests/fsdp_on_cpu.py patches accelerate {WRITTEN_FOR}, found {accelerate.__version__}")
    prepare_backend = PartialState._prepare_backend

    def cpu_as_gpu(self, cpu=False, sagemaker_dp=False, backend=None):
        if not cpu and int(os.environ.get("LOCAL_RANK", -1)) != -1:
            return backend or "gloo", DistributedType.MULTI_GPU
        return prepare_backend(self, cpu, sagemaker_dp, backend)

    PartialState._prepare_backend = cpu_as_gpu
    os.environ["ACCELERATE_TORCH_DEVICE"] = "cpu"  # read before accelerate would pick cuda:<rank>


if __name__ == "__main__":
    open_fsdp_to_cpu_ranks()
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
