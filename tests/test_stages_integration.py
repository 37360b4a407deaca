"""base -> SFT on the smoke recipes, end to end through the CLI."""

import json
import shutil
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.cli import main
from tests.conftest import SMOKE, metrics, stage_args

ROOT = Path(__file__).resolve().parents[1]


def test_sft_policy_beats_the_base_model(runs):
    base, sft = metrics(runs / "base"), metrics(runs / "sft")
    assert sft["gold_mean"] > base["gold_mean"] + 0.1
    assert sft["finished_fraction"] > base["finished_fraction"]


def test_output_folders_are_complete_and_load_with_plain_transformers(runs):
    for stage in ("base", "sft"):
        folder = runs / stage
        assert (folder / "model.safetensors").exists() and not list(folder.glob("checkpoint-*"))
        assert not (runs / f"{stage}.partial").exists()
        found = metrics(folder)
        assert {"train_loss", "eval_loss", "gold_mean", "gold_by_family"} <= set(found)
        assert (folder / "recipe.yaml").read_text().startswith(f"stage: {stage}")
        model = AutoModelForCausalLM.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert "{% generation %}" in tokenizer.chat_template
        assert model.config.eos_token_id == tokenizer.eos_token_id


def test_lora_sft_saves_an_adapter_that_peft_loads(runs):
    from peft import AutoPeftModelForCausalLM

    out = runs / "sft_lora"
    args = stage_args(
        "sft",
        SMOKE / "sft/config_lora.yaml",
        model_name_or_path=runs / "base",
        output_dir=out,
        max_steps=10,
        sandbox_eval_prompts=14,
        max_train_samples=320,
    )
    assert main(args) == 0
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert model.peft_config["default"].r == 16
    assert metrics(out)["gold_num_prompts"] == 14


def test_conversational_data_without_chat_template_is_a_clear_error(runs, tmp_path, capsys):
    plain = tmp_path / "plain"
    shutil.copytree(runs / "base", plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    args = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=plain, output_dir=tmp_path / "out")
    assert main(args) == 2
    assert "has no chat template" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_recipe_key_exits_with_status_2(capsys):
    assert main(["sft", "--config", str(SMOKE / "sft/config_smoke.yaml"), "--learnig_rate", "1e-3"]) == 2
    assert "did you mean 'learning_rate'" in capsys.readouterr().err
