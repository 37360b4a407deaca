from pathlib import Path

import pytest
from trl import ModelConfig, SFTConfig

from pipeline.configs import ScriptArguments, TinyModelConfig, build_configs, load_configs, parse_overrides
from pipeline.errors import RecipeError
from pipeline.registry import stage

ROOT = Path(__file__).resolve().parents[1]
BASE = {"dataset_card": "data_cards/sandbox_pretrain.md", "output_dir": "/tmp/x", "bf16": False}


def test_overrides_are_typed():
    argv = ["--learning_rate", "1e-4", "--use_peft", "--lora_r=8", "--report_to", "none", "--no_normalize_reward"]
    assert parse_overrides(stage("ppo"), argv) == {
        "learning_rate": 1e-4,
        "use_peft": True,
        "lora_r": 8,
        "report_to": "none",
        "normalize_reward": False,
    }
    modules = parse_overrides(
        stage("sft"), ["--lora_target_modules", "q_proj", "v_proj", "--max_train_samples", "null"]
    )
    assert modules == {"lora_target_modules": ["q_proj", "v_proj"], "max_train_samples": None}
    with pytest.raises(RecipeError, match="expected --key value"):
        parse_overrides(stage("sft"), ["learning_rate"])


def test_command_line_values_are_checked_by_the_stages_types():
    with pytest.raises(RecipeError, match=r"argument --learning_rate/--learning-rate: invalid float value: 'fast'"):
        parse_overrides(stage("sft"), ["--learning_rate", "fast"])
    with pytest.raises(RecipeError, match=r"argument --kl_estimator/--kl-estimator: invalid choice: 'k2'"):
        parse_overrides(stage("ppo"), ["--kl_estimator", "k2"])
    with pytest.raises(
        RecipeError, match=r"unknown key 'learnign_rate' in the command line .*did you mean 'learning_rate'"
    ):
        parse_overrides(stage("ppo"), ["--learnign_rate", "1e-3"])


def test_misspelt_key_suggests_the_closest():
    with pytest.raises(RecipeError, match=r"unknown key 'learnign_rate'.*did you mean 'learning_rate'"):
        build_configs(stage("sft"), {**BASE, "learnign_rate": 1e-3})
    with pytest.raises(RecipeError, match=r"unknown key 'lora_alpah'.*did you mean 'lora_alpha'"):
        build_configs(stage("sft"), {**BASE, "lora_alpah": 8})


def test_unknown_key_without_a_close_match():
    with pytest.raises(RecipeError, match=r"unknown key 'zzz' in recipe for stage 'sft'$"):
        build_configs(stage("sft"), {**BASE, "zzz": 1})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("learning_rate", "fast", r"'learning_rate' expects float, got str"),
        ("per_device_train_batch_size", 2.5, r"'per_device_train_batch_size' expects int"),
        ("use_peft", "yes", r"'use_peft' expects bool"),
        ("learning_rate", -1e-4, r"'learning_rate' must be > 0"),
        ("lora_dropout", 1.5, r"'lora_dropout' must be in \[0, 1\]"),
        ("lora_target_modules", 3, r"'lora_target_modules' expects"),
        ("report_to", 7, r"'report_to' expects"),
    ],
)
def test_wrong_type_or_impossible_value_names_the_key(key, value, message):
    with pytest.raises(RecipeError, match=message):
        build_configs(stage("sft"), {**BASE, key: value})


def test_k_responses_must_be_a_ranking_size():
    with pytest.raises(RecipeError, match=r"'num_responses' must be in \[2, 9\], got 12"):
        build_configs(stage("label"), {"model_name_or_path": "m", "output_dir": "o", "num_responses": 12})


def test_missing_required_key():
    with pytest.raises(RecipeError, match="lacks required key 'dataset_card'"):
        build_configs(stage("sft"), {"output_dir": "/tmp/x", "bf16": False})


def test_builds_trl_configs_with_int_widened_to_float():
    script, model, training = build_configs(stage("sft"), {**BASE, "learning_rate": 1, "use_peft": True, "lora_r": 4})
    assert isinstance(script, ScriptArguments) and isinstance(model, ModelConfig) and isinstance(training, SFTConfig)
    assert training.learning_rate == 1.0 and isinstance(training.learning_rate, float)
    assert model.use_peft and model.lora_r == 4


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("recipes/*/*/config_*.yaml")))
def test_every_recipe_builds_its_configs(recipe):
    name = Path(recipe).parent.name
    # Real-model recipes ask for bf16, which TrainingArguments refuses on a CPU unless told to use it.
    overrides = ["--use_cpu"] if "sandbox" not in recipe and name != "label" else []
    configs, values = load_configs(stage(name), ROOT / recipe, overrides)
    assert values["output_dir"].startswith("outputs/")
    if name == "label":
        assert (ROOT / configs[0].prompts_card).is_file() and configs[0].model_name_or_path
        return
    assert (ROOT / configs[0].dataset_card).is_file()
    if name == "base":
        assert isinstance(configs[1], TinyModelConfig)
    elif name == "ppo":
        assert configs[2].sft_model_path and configs[2].reward_model_path and not configs[1].model_name_or_path
        assert configs[2].ptx_dataset_card is None or (ROOT / configs[2].ptx_dataset_card).is_file()
    else:
        assert configs[1].model_name_or_path


def test_qlora_recipe_keeps_trl_names_and_security_defaults():
    recipe = ROOT / "recipes/llama-3.1-8b/sft/config_qlora.yaml"
    (_, model, training), _ = load_configs(stage("sft"), recipe, ["--use_cpu"])
    assert model.load_in_4bit and model.use_peft and model.bnb_4bit_quant_type == "nf4"
    assert model.lora_target_modules == "all-linear"  # TRL unwraps a one-item list for PEFT
    assert training.trust_remote_code is False


def test_command_line_no_is_a_word_and_false_a_bool():
    assert parse_overrides(stage("sft"), ["--save_strategy", "no", "--bf16", "false", "--eval_strategy=steps"]) == {
        "save_strategy": "no",
        "bf16": False,
        "eval_strategy": "steps",
    }
