"""Merge an adapter into its base; push an output folder with a model card (a fake HfApi: no network here)."""

import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from pipeline import hub, outputs
from pipeline.cli import main
from tests.conftest import SMOKE, stage_args

TOKEN = "hf_FakeTokenThatMustNeverLandAnywhere123"


@pytest.fixture(scope="module")
def adapters(runs):
    """A LoRA SFT adapter on the smoke base, and a LoRA reward model on the smoke SFT model."""
    sft = runs / "hub_sft_lora"
    args = stage_args(
        "sft", SMOKE / "sft/config_lora.yaml", model_name_or_path=runs / "base", output_dir=sft, max_steps=3
    )
    assert main([*args, "--sandbox_eval_prompts", "0", "--max_train_samples", "96"]) == 0
    rm = runs / "hub_rm_lora"
    args = stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=rm)
    assert main([*args, "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--max_steps", "3"]) == 0
    return sft, rm


def _ids() -> torch.Tensor:
    return torch.tensor([[5, 6, 7, 8, 9, 10]])


def test_merged_policy_computes_what_the_adapter_did(adapters, tmp_path):
    sft, _ = adapters
    out = hub.merge(sft, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert (out / "recipe.yaml").is_file() and (out / "tokenizer.json").is_file()
    expected = AutoPeftModelForCausalLM.from_pretrained(sft).eval()(_ids()).logits
    merged = AutoModelForCausalLM.from_pretrained(out).eval()(_ids()).logits
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)


def test_merged_reward_model_keeps_its_trained_score_head(adapters, tmp_path):
    _, rm = adapters
    out = hub.merge(rm, tmp_path / "merged_rm")
    expected = AutoPeftModelForSequenceClassification.from_pretrained(rm, num_labels=1).eval()(_ids()).logits
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()(_ids()).logits
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)


def test_merging_full_weights_is_a_clear_error(runs, capsys):
    assert main(["merge", str(runs / "sft")]) == 2
    assert "holds full weights, not a LoRA adapter" in capsys.readouterr().err
    assert not (runs / "sft_merged.partial").exists() and not (runs / "sft_merged").exists()


def test_dry_run_writes_the_exact_upload_with_a_card(adapters, runs, tmp_path, capsys):
    sft, _ = adapters
    out = tmp_path / "upload"
    assert main(["push", str(sft), "--repo_id", "someone/sandbox-sft", "--dry_run", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "recipe.yaml"} <= set(
        files
    )
    assert "training_args.bin" not in files and "chain.json" not in files
    printed = capsys.readouterr().out
    assert all(f"  {name}\n" in printed for name in files) and printed.count("\n  ") == len(files)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert {"rlhf", "sft", "lora"} <= set(card.data.tags) and card.data.license == "other"
    assert card.data.base_model is None  # the sandbox base is local, not a Hub model
    assert f"base (`{runs / 'base'}`) -> SFT (`{sft}`)" in card.text
    assert 'AutoPeftModelForCausalLM.from_pretrained("someone/sandbox-sft")' in card.text
    model = AutoPeftModelForCausalLM.from_pretrained(out)
    assert model.peft_config["default"].task_type == "CAUSAL_LM"


def test_card_names_the_hub_base_model_and_hub_datasets(tmp_path):
    run = tmp_path / "sft"
    run.mkdir()
    (run / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"]}')
    recipe = "stage: sft\nmodel_name_or_path: Qwen/Qwen2.5-0.5B\ndataset_card: data_cards/ultrachat_200k.md\n"
    (run / "recipe.yaml").write_text(recipe)
    card = hub.model_card(run, "me/qwen-sft", merged=False, license_id="apache-2.0")
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and card.data.datasets == ["HuggingFaceH4/ultrachat_200k"]
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        contents = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.calls.append(("upload_folder", kwargs["repo_id"], {**kwargs, "contents": contents}))


def test_push_creates_the_repo_and_uploads_without_leaking_the_token(adapters, monkeypatch, capsys):
    sft, _ = adapters
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = FakeApi()
    files = hub.push(sft, "someone/sandbox-sft", private=True, commit_message="first", api=api)
    (create, repo, create_args), (upload, repo2, upload_args) = api.calls
    assert (create, repo, repo2, upload) == (
        "create_repo",
        "someone/sandbox-sft",
        "someone/sandbox-sft",
        "upload_folder",
    )
    assert create_args == {"token": TOKEN, "private": True, "exist_ok": True}
    assert upload_args["commit_message"] == "first" and upload_args["token"] == TOKEN
    assert sorted(upload_args["contents"]) == files and "README.md" in files
    assert not any(TOKEN.encode() in data for data in upload_args["contents"].values())
    assert TOKEN not in capsys.readouterr().out


def test_push_needs_a_token_and_a_repo_id(adapters, monkeypatch, tmp_path, capsys):
    sft, _ = adapters
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty login cache
    assert main(["push", str(sft), "--repo_id", "someone/x"]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert main(["push", str(sft), "--repo_id", "just-a-name"]) == 2
    assert "--repo_id must be USER/NAME" in capsys.readouterr().err
    assert main(["push", str(sft), "--repo_id", "someone/my model"]) == 2
    assert "--repo_id 'someone/my model'" in capsys.readouterr().err


def test_push_refuses_weights_that_are_not_finite(adapters, tmp_path, capsys):
    sft, _ = adapters
    damaged = Path(shutil.copytree(sft, tmp_path / "damaged"))
    weights = load_file(damaged / "adapter_model.safetensors")
    name = sorted(weights)[0]
    weights[name][0] = float("nan")
    save_file(weights, damaged / "adapter_model.safetensors")
    out = tmp_path / "upload"
    assert main(["push", str(damaged), "--repo_id", "someone/x", "--dry_run", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not finite" in err and name in err and not out.exists() and not outputs.partial_dir(out).exists()
