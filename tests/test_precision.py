"""The precision policy: `bf16: auto` by hardware, frozen weights in bf16, trained ones in fp32, and a bf16
run that agrees with an fp32 one: the same figures within a stated tolerance, each PPO update starting at ratio 1.
"""

import logging

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForSequenceClassification

from pipeline import precision
from pipeline.cli import main
from pipeline.configs import build_configs, parse_overrides
from pipeline.errors import RecipeError
from pipeline.ppo.trainer import PPOTrainer
from pipeline.registry import stage
from pipeline.stages import eval as eval_stage
from tests.conftest import SMOKE, log, metrics, ppo_args, stage_args

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx512f avx512_bf16 amx_tile amx_bf16\n"


def test_the_cpu_flags_that_compute_bf16_natively():
    assert precision.cpu_bf16_flags(ZEN4) == ["avx512_bf16"]
    assert precision.cpu_bf16_flags(SAPPHIRE_RAPIDS) == ["avx512_bf16", "amx_bf16"]
    assert precision.cpu_bf16_flags(SKYLAKE) == []
    assert precision.cpu_bf16_flags("") == []  # not Linux


@pytest.mark.parametrize("cpuinfo, chosen", [(ZEN4, True), (SKYLAKE, False)])
def test_auto_picks_by_the_cpu_and_says_so_in_one_line(cpuinfo, chosen, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: precision.CPU_BF16_FLAGS[:1] if chosen else [])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    values = {"bf16": "auto", "learning_rate": 1e-4}
    with caplog.at_level(logging.INFO, logger="pipeline.precision"):
        precision.resolve_auto(values, trainer=True)
    assert values["bf16"] is chosen
    # transformers refuses bf16 without a GPU unless use_cpu says the run is on the CPU
    assert values.get("use_cpu", False) is chosen
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"precision: {'bf16' if chosen else 'fp32'}"]


def test_a_recipe_and_a_command_line_may_say_auto_and_nothing_else():
    assert parse_overrides(stage("sft"), ["--bf16", "auto"]) == {"bf16": "auto"}
    assert parse_overrides(stage("sft"), ["--bf16=auto"]) == {"bf16": "auto"}
    assert parse_overrides(stage("sft"), ["--bf16", "false"]) == {"bf16": False}
    with pytest.raises(RecipeError, match="bf16"):
        parse_overrides(stage("sft"), ["--bf16", "maybe"])
    with pytest.raises(RecipeError, match="'bf16' expects bool"):
        build_configs(stage("sft"), {"dataset_card": "x.md", "bf16": "maybe"})
    # `auto` is the bf16 key's own: dtype takes transformers' `auto`, not ours
    assert parse_overrides(stage("sft"), ["--dtype", "auto"]) == {"dtype": "auto"}


def test_frozen_weights_go_bf16_and_trained_ones_stay_fp32():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_labels=1, pad_token_id=0)  # fmt: skip
    model = precision.hold_frozen(LlamaForSequenceClassification(config), bf16=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS")
    model = precision.trainable_in_fp32(get_peft_model(model, lora), bf16=True)
    trained = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert any(".score." in n for n in trained) and set(trained.values()) == {torch.float32}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    fp32 = LlamaForSequenceClassification(config)
    assert {p.dtype for p in precision.hold_frozen(fp32, bf16=False).parameters()} == {torch.float32}


LORA = {"use_peft": "true", "lora_r": 8, "lora_alpha": 16, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def lora_sft(runs, tmp_path_factory):
    """A LoRA SFT run on the smoke base, in fp32 and in bf16: {precision: output}."""
    out = tmp_path_factory.mktemp("precision")
    recipe = SMOKE / "sft/config_smoke.yaml"
    runs_by = {}
    for bf16 in ("false", "true"):
        runs_by[bf16] = out / f"sft_{bf16}"
        argv = stage_args("sft", recipe, model_name_or_path=runs / "base", output_dir=runs_by[bf16], bf16=bf16, **LORA)
        assert main([*argv, "--use_cpu", "true"]) == 0
    return runs_by


@pytest.mark.slow
def test_lora_sft_in_bf16_saves_an_fp32_adapter_and_matches_fp32(lora_sft):
    adapter = load_file(lora_sft["true"] / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    fp32, bf16 = metrics(lora_sft["false"]), metrics(lora_sft["true"])
    assert bf16["eval_loss"] != fp32["eval_loss"]  # it did compute in bf16
    assert bf16["eval_loss"] == pytest.approx(fp32["eval_loss"], rel=0.02)
    assert bf16["gold_mean"] == pytest.approx(fp32["gold_mean"], abs=0.05)


@pytest.mark.slow
def test_lora_ppo_in_bf16_starts_each_update_at_ratio_1_with_frozen_models_in_bf16(models, tmp_path, monkeypatch):
    seen: dict[str, set] = {}
    train = PPOTrainer.train

    def inspect_then_train(self):
        seen["trained"] = {p.dtype for p in self.model.parameters() if p.requires_grad}
        seen["frozen"] = {p.dtype for p in self.model.parameters() if not p.requires_grad}
        return train(self)

    monkeypatch.setattr(PPOTrainer, "train", inspect_then_train)
    one_step = {"num_ppo_epochs": 1, "num_mini_batches": 1, "total_episodes": 32}
    runs_by = {}
    for bf16 in ("false", "true"):
        runs_by[bf16] = tmp_path / f"ppo_{bf16}"
        argv = ppo_args(models, runs_by[bf16], bf16=bf16, use_cpu="true", **LORA, **one_step)
        assert main(argv) == 0
    assert seen["trained"] == {torch.float32} and seen["frozen"] == {torch.bfloat16}
    for step in log(runs_by["true"]):
        # the rollout's log-probs and the first learning pass's agree: same precision, no dropout
        assert step["policy/approxkl"] < 1e-10 and step["policy/clipfrac_avg"] == 0, step["step"]
    fp32, bf16 = log(runs_by["false"]), log(runs_by["true"])
    assert bf16[0]["objective/rm_score"] != fp32[0]["objective/rm_score"]  # it did compute in bf16
    assert bf16[0]["objective/rm_score"] == pytest.approx(fp32[0]["objective/rm_score"], abs=0.05)
    assert metrics(runs_by["true"])["eval"]["policies"]["ppo"]["gold"]["mean"] == pytest.approx(
        metrics(runs_by["false"])["eval"]["policies"]["ppo"]["gold"]["mean"], abs=0.05
    )


def test_outside_a_trainer_auto_sets_bf16_alone_and_asks_the_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    values = {"bf16": "auto"}
    precision.resolve_auto(values, trainer=False)  # label, eval: no TrainingArguments, no use_cpu
    assert values == {"bf16": True}
    # label and eval sample on the CPU: a GPU beside it does not decide
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: [])
    values = {"bf16": "auto"}
    precision.resolve_auto(values, trainer=False)
    assert values == {"bf16": False}


def test_auto_keeps_fp32_for_deepspeed_on_cpu_ranks(monkeypatch):
    # transformers needs use_cpu for bf16 without a GPU, and accelerate skips DeepSpeed under use_cpu
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: ["amx_bf16"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    values = {"bf16": "auto"}
    precision.resolve_auto(values, trainer=True)
    assert values == {"bf16": False}


@pytest.mark.slow
def test_eval_in_bf16_samples_with_bf16_weights_and_matches_fp32(runs, tmp_path, monkeypatch):
    dtypes = []
    hold_frozen = eval_stage.hold_frozen

    def recording(model, bf16):
        model = hold_frozen(model, bf16)
        dtypes.append(next(model.parameters()).dtype)
        return model

    monkeypatch.setattr(eval_stage, "hold_frozen", recording)
    found = {}
    for bf16 in ("false", "true"):
        out = tmp_path / bf16
        args = ["eval", "--policies", f"base={runs / 'base'}", f"sft={runs / 'sft'}", "--num_prompts", "40"]
        assert main([*args, "--num_samples", "1", "--best_of_n", "0", "--bf16", bf16, "--output_dir", str(out)]) == 0
        found[bf16] = metrics(out)["policies"]
    assert dtypes == [torch.float32] * 2 + [torch.bfloat16] * 2
    for name in ("base", "sft"):
        assert found["true"][name]["gold"]["mean"] == pytest.approx(found["false"][name]["gold"]["mean"], abs=0.05)
    assert found["true"]["base"]["kl_to_reference"]["mean"] == pytest.approx(
        found["false"]["base"]["kl_to_reference"]["mean"], rel=0.1
    )


@pytest.mark.slow
def test_full_ppo_in_bf16_keeps_the_reference_like_the_policy_so_kl_starts_at_0(models, tmp_path, monkeypatch):
    seen: dict[str, set] = {}
    train = PPOTrainer.train

    def inspect_then_train(self):
        for name, model in (("policy", self.policy), ("reference", self.ref_policy), ("reward", self.reward_model)):
            seen[name] = {p.dtype for p in model.parameters()}
        return train(self)

    monkeypatch.setattr(PPOTrainer, "train", inspect_then_train)
    out = tmp_path / "ppo"
    one_step = {"num_ppo_epochs": 1, "num_mini_batches": 1, "total_episodes": 16}
    assert main(ppo_args(models, out, bf16="true", use_cpu="true", **one_step)) == 0
    assert seen == {"policy": {torch.float32}, "reference": {torch.float32}, "reward": {torch.bfloat16}}
    first = log(out)[0]
    assert first["objective/kl"] == 0 and first["policy/approxkl"] < 1e-10
