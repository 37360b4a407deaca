"""QLoRA: LoRA adapters on 4-bit NF4 weights (bitsandbytes runs 4-bit on this CPU) for SFT, the RM and PPO."""

import json

import pytest
from peft import AutoPeftModelForCausalLM
from safetensors import safe_open
from trl import ModelConfig

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.models import load_causal_lm, prepare_quantized
from tests.conftest import SMOKE, metrics, stage_args

QLORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "load_in_4bit": True}


def test_4bit_loading_quantizes_the_linear_layers_and_needs_lora(runs):
    args = ModelConfig(model_name_or_path=str(runs / "sft"), load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = load_causal_lm(args)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    with pytest.raises(PipelineError, match="set use_peft: true"):
        prepare_quantized(model, args, activation_checkpointing=False)


def test_qlora_sft_rm_and_ppo_train_adapters_on_4bit_weights(runs, tmp_path):
    sft = tmp_path / "sft"
    args = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=runs / "base", output_dir=sft)
    assert main([*args, *sum(([f"--{k}", str(v)] for k, v in QLORA.items()), []), "--max_steps", "4"]) == 0
    assert json.loads((sft / "adapter_config.json").read_text())["r"] == 4
    assert AutoPeftModelForCausalLM.from_pretrained(sft).peft_config["default"].task_type == "CAUSAL_LM"

    rm = tmp_path / "rm"
    args = stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=rm, **QLORA)
    assert main([*args, "--max_steps", "4"]) == 0
    with safe_open(str(rm / "adapter_model.safetensors"), "pt") as weights:
        score = [k for k in weights.keys() if "score" in k]  # noqa: SIM118 (safe_open is not iterable)
        assert score and weights.get_tensor(score[0]).isfinite().all()
    assert 0.0 <= metrics(rm)["eval_accuracy"] <= 1.0

    ppo = tmp_path / "ppo"
    overrides = {"sft_model_path": runs / "sft", "reward_model_path": rm, "output_dir": ppo, **QLORA}
    assert main(stage_args("ppo", SMOKE / "ppo/config_smoke.yaml", **overrides)) == 0
    log = [json.loads(line) for line in (ppo / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(row["policy/approxkl"] >= 0 for row in log)
    assert (ppo / "adapter_model.safetensors").is_file() and "gold_mean" in metrics(ppo)["eval"]["policies"]["ppo"]
