"""The prepared GPU check (scripts/gpu_check.py) in its tiny CPU mode, and the model shape it checks on a GPU."""

import json
import math

import pytest
import torch
from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

from scripts.gpu_check import QWEN25_05B, main

pytestmark = pytest.mark.slow  # the GPU check's stages in bf16


def test_the_full_size_model_has_qwen25_05b_shape():
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=151936, **QWEN25_05B))
    total = sum(p.numel() for p in model.parameters())
    assert 490e6 < total < 500e6  # Qwen2.5-0.5B: 494M parameters, 136M of them the tied embedding


def test_gpu_check_runs_sft_ppo_and_qlora_in_bf16(tmp_path):
    results = main(["--tiny", "--output_dir", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == results
    base = AutoConfig.from_pretrained(tmp_path / "base")
    assert base.model_type == "qwen2" and base.dtype == torch.bfloat16
    assert set(results) >= {"sft", "ppo", "qlora"} and results["device"] == "cpu"
    for name in ("sft", "qlora"):
        assert 0 < results[name]["train_loss"] < 20, name
    assert results["ppo"]["episodes_per_second"] > 0 and math.isfinite(results["ppo"]["kl_to_sft"])
    assert (tmp_path / "ppo" / "adapter_model.safetensors").is_file()


def test_the_engine_matrix_asks_for_two_gpus_where_there_are_fewer(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match="--engines needs 2 CUDA GPUs, and 1 are visible"):
        main(["--engines", "--output_dir", str(tmp_path)])
