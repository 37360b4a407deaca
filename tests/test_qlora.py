"""QLoRA: LoRA adapters on 4-bit NF4 weights (bitsandbytes runs 4-bit on this CPU) for SFT, the RM, DPO and PPO."""

import json

import pytest
from peft import AutoPeftModelForCausalLM
from safetensors import safe_open
from trl import ModelConfig

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.models import load_causal_lm, prepare_quantized
from pipeline.ppo.trainer import PPOTrainer
from tests.conftest import SMOKE, metrics, stage_args

QLORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "load_in_4bit": True}


def test_4bit_loading_quantizes_the_linear_layers_and_needs_lora(runs):
    args = ModelConfig(model_name_or_path=str(runs / "sft"), load_in_4bit=True, bnb_4bit_quant_type="nf4")
    model = load_causal_lm(args)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    with pytest.raises(PipelineError, match="set use_peft: true"):
        prepare_quantized(model, args, activation_checkpointing=False)


def test_qlora_sft_rm_dpo_and_ppo_train_adapters_on_4bit_weights(runs, tmp_path, monkeypatch):
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
    assert metrics(rm)["eval_pairs"] > 0

    dpo = tmp_path / "dpo"
    args = stage_args("dpo", SMOKE / "dpo/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=dpo, **QLORA)
    assert main([*args, "--max_steps", "4"]) == 0
    found = metrics(dpo)
    assert found["train_steps"] == 4 and 0 <= found["eval_rewards/accuracies"] <= 1
    assert json.loads((dpo / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"

    kinds = {}
    train = PPOTrainer.train

    def inspect_then_train(self):
        for name, model in (("policy", self.policy), ("value", self.value_model)):
            kinds[name] = {type(m).__name__ for m in model.modules()}
        return train(self)

    monkeypatch.setattr(PPOTrainer, "train", inspect_then_train)
    ppo = tmp_path / "ppo"
    overrides = {"sft_model_path": runs / "sft", "reward_model_path": rm, "output_dir": ppo, **QLORA}
    assert main(stage_args("ppo", SMOKE / "ppo/config_smoke.yaml", **overrides)) == 0
    log = [json.loads(line) for line in (ppo / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(row["policy/approxkl"] > 0 for row in log)  # the adapters moved the policy
    assert "Linear4bit" in kinds["policy"]  # the policy's base (its reference too) is 4-bit
    # the value model and RM come from a LoRA RM, merged into its base: full precision (merging needs it)
    assert "Linear4bit" not in kinds["value"]
    assert (ppo / "adapter_model.safetensors").is_file() and "gold_mean" in metrics(ppo)["eval"]["policies"]["ppo"]
