"""vLLM as the generation engine (`generation_engine: vllm`): a separate process in vLLM's own venv.

vLLM pins transformers below ours, so it runs in `.venv-vllm` (`make setup-vllm`) as an engine
process (`pipeline/vllm_worker.py`), the shape of TRL's server mode, OpenRLHF and verl. Token ids
go both ways, so the trainer's tokenizer is the only one. Weights go through a safetensors file
in /dev/shm: at the start (the policy as loaded, LoRA merged) and after every PPO update.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import PretrainedConfig

from pipeline.errors import PipelineError
from pipeline.locks import alive

logger = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"  # requirements-vllm.txt and requirements-vllm-cuda.txt
INSTALL = "make setup-vllm"
WORKER = Path(__file__).with_name("vllm_worker.py")
ENGINES = ("torch", "vllm")


def vllm_python() -> Path:
    """The python of vLLM's venv: $VLLM_PYTHON, else the project's `.venv-vllm`."""
    path = Path(os.environ.get("VLLM_PYTHON") or Path(__file__).resolve().parents[1] / ".venv-vllm/bin/python")
    if not path.is_file():
        raise PipelineError(
            f"generation_engine vllm: no vLLM venv at {path}: run `{INSTALL}` (or set VLLM_PYTHON to a python "
            f"with vllm {VLLM_VERSION})"
        )
    return path


def check_engine(engine: str) -> None:
    """A stage's first check: the engine is one there is, and vLLM's venv is there if it is named."""
    if engine not in ENGINES:
        raise PipelineError(f"generation_engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "vllm":
        vllm_python()


def kv_cache_gib(config: PretrainedConfig, sequences: int, max_model_len: int, dtype: torch.dtype) -> int:
    """GiB of KV cache for `sequences` at once of `max_model_len` tokens (at least 1): keys and values, every layer."""
    text = config.get_text_config()
    heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    per_token = 2 * text.num_hidden_layers * heads * head_dim * dtype.itemsize
    return max(1, math.ceil(per_token * sequences * max_model_len / 2**30))


def _shape(config: PretrainedConfig) -> dict:
    """What makes two models' weights interchangeable."""
    text = config.get_text_config()
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    return {key: getattr(text, key, None) for key in (*keys, "num_key_value_heads", "tie_word_embeddings")}


def _config(model: torch.nn.Module) -> PretrainedConfig:
    return model.get_base_model().config if hasattr(model, "get_base_model") else model.config


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's weights under its base model's names, LoRA deltas added in; the model itself unchanged."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return dict(model.state_dict())
    base = model.get_base_model()
    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            weight = module.get_base_layer().weight
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter)
            merged[f"{name}.weight"] = weight
    weights = {}
    for name, tensor in base.state_dict().items():
        name = name.replace(".base_layer.", ".")
        if "lora_" not in name:
            weights[name] = merged.get(name, tensor)
    return weights


def _write_weights(weights: dict[str, torch.Tensor], path: Path, dtype: torch.dtype) -> None:
    """One safetensors file; a tensor tied to another (lm_head to the embeddings) is written as a copy."""
    seen, tensors = set(), {}
    for name, tensor in weights.items():
        tensor = tensor.detach().to("cpu", dtype).contiguous()
        tensors[name] = tensor.clone() if tensor.data_ptr() in seen else tensor
        seen.add(tensor.data_ptr())
    save_file(tensors, str(path))


def _write_config(config: PretrainedConfig, path: Path) -> None:
    """The model's config.json, its embeddings untied: vLLM's CPU backend repacks lm_head apart from the
    embeddings, so reloading tied weights would change the embeddings only (measured: 1.9 nats off)."""
    values = config.to_dict()
    values["tie_word_embeddings"] = False
    path.write_text(json.dumps(values, indent=2))


def open_engine(
    name: str,
    model: torch.nn.Module,
    prompts: list[list[int]],
    max_new_tokens: int,
    sequences: int,
    seed: int,
    dtype: torch.dtype | None = None,
) -> contextlib.AbstractContextManager[VLLMEngine | None]:
    """The engine a recipe names for sampling up to `max_new_tokens` after `prompts`, `sequences` at a time,
    computing in `dtype` (default: the model's): None for torch (`sampling.sample`'s own loop)."""
    check_engine(name)
    if name == "torch":
        return contextlib.nullcontext()
    dtype = dtype or next(p.dtype for p in model.parameters() if p.is_floating_point())
    max_model_len = max(map(len, prompts)) + max_new_tokens + 1  # + 1: `logprobs` asks for a token after a response
    return VLLMEngine(model, max_model_len=max_model_len, sequences=sequences, seed=seed, dtype=dtype)


def _scratch_folder() -> Path:
    """A new folder for an engine's socket, log and weights, in /dev/shm where there is one (the weights pass
    through memory, not the disk); those left by the engines of processes no longer running are removed."""
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    for stale in root.glob("pipeline-vllm-*-*"):
        pid = stale.name.split("-")[2]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"pipeline-vllm-{os.getpid()}-", dir=root))


class VLLMEngine:
    """A vLLM engine process serving one policy; `close()` (or `with`) ends it."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_model_len: int,
        sequences: int,
        seed: int,
        dtype: torch.dtype = torch.bfloat16,
        kv_cache: int | None = None,
        gpu_memory_utilization: float = 0.3,
        start_timeout: float = 900.0,
    ) -> None:
        python = vllm_python()
        self.dtype = dtype
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._dir = _scratch_folder()
        try:
            self._start(python, model, max_model_len, sequences, seed, kv_cache, gpu_memory_utilization, start_timeout)
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        python: Path,
        model: torch.nn.Module,
        max_model_len: int,
        sequences: int,
        seed: int,
        kv_cache: int | None,
        gpu_memory_utilization: float,
        timeout: float,
    ) -> None:
        config = _config(model)
        self.shape = _shape(config)
        folder = self._dir / "model"
        folder.mkdir()
        _write_config(config, folder / "config.json")
        _write_weights(full_weights(model), folder / "model.safetensors", self.dtype)
        kv_cache = kv_cache or kv_cache_gib(config, sequences, max_model_len, self.dtype)
        options = {
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_model_len": max_model_len,
            "seed": seed,
            "enforce_eager": True,  # no graph capture: a few calls per stage would not repay it
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        authkey = secrets.token_bytes(16)
        env = os.environ | {
            "PIPELINE_VLLM_AUTHKEY": authkey.hex(),
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine in the worker process itself
            "VLLM_CPU_KVCACHE_SPACE": str(kv_cache),
            # vLLM cuts torch to 1 thread unless told otherwise
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())),
        }
        address = str(self._dir / "socket")
        self.log = self._dir / "engine.log"
        logger.info("starting the vLLM engine (KV cache %d GiB, max_model_len %d)", kv_cache, max_model_len)
        with self.log.open("w") as log:
            self._process = subprocess.Popen(
                [str(python), str(WORKER), address, str(folder), json.dumps(options)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + timeout
        while not Path(address).exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise PipelineError(f"the vLLM engine did not start in {timeout:.0f} s: {self._last_log_line()}")
            time.sleep(0.05)
        self._connection = Client(address, family="AF_UNIX", authkey=authkey)
        version = self._receive(deadline)["version"]
        if version != VLLM_VERSION:
            raise PipelineError(f"vLLM {version} in {python}, the pipeline needs {VLLM_VERSION}: run `{INSTALL}`")
        shutil.rmtree(folder)  # vLLM holds the weights now

    def _last_log_line(self) -> str:
        """The engine's last word (its log goes with its scratch folder when the engine closes)."""
        lines = self.log.read_text().strip().splitlines() if self.log.exists() else []
        return lines[-1] if lines else "(no output)"

    def _check_alive(self) -> None:
        if self._process.poll() is not None:
            raise PipelineError(f"the vLLM engine exited with code {self._process.returncode}: {self._last_log_line()}")

    def _receive(self, deadline: float = math.inf) -> Any:
        while not self._connection.poll(1.0):
            self._check_alive()
            if time.monotonic() > deadline:
                raise PipelineError(f"the vLLM engine did not answer in time: {self._last_log_line()}")
        reply = self._connection.recv()
        if not reply["ok"]:
            raise PipelineError(f"the vLLM engine failed: {reply['error']}")
        return reply

    def _request(self, op: str, **fields: Any) -> Any:
        self._connection.send({"op": op, **fields})
        return self._receive().get("result")

    def generate(
        self,
        prompts: list[list[int]],
        temperature: float,
        max_new_tokens: int,
        stop_token_id: int | None,
        seed: int | None = None,
    ) -> list[list[int]]:
        """A response (token ids, the stop token kept) to each prompt; temperature 0 is greedy. `seed`: prompt i
        draws with seed + i (a seeded request of several samples fails on vLLM's CPU backend: repeat the prompt
        instead); None: the engine's own stream."""
        return self._request(
            "generate",
            prompts=prompts,
            temperature=temperature,
            max_tokens=max_new_tokens,
            stop_token_ids=[] if stop_token_id is None else [stop_token_id],
            seed=seed,
        )

    def logprobs(self, prompts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
        """vLLM's log-probs (temperature 1) of given responses after their prompts."""
        return self._request("logprobs", prompts=prompts, responses=responses)

    def serves(self, model: torch.nn.Module) -> bool:
        """Whether `model`'s weights fit this engine (`load_weights`)."""
        return _shape(_config(model)) == self.shape

    def load_weights(self, model: torch.nn.Module) -> None:
        """Replace the engine's weights with `model`'s (LoRA merged), in place."""
        path = self._dir / "weights.safetensors"
        _write_weights(full_weights(model), path, self.dtype)
        try:
            self._request("load_weights", path=str(path))
        finally:
            path.unlink()

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.send({"op": "close"})
                self._connection.poll(30)
            except (OSError, EOFError):
                pass
            self._connection.close()
            self._connection = None
        if self._process is not None:
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
