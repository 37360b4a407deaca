"""The bad inputs users meet: each exits 2 with one `error:` line naming the culprit and leaves no output.

A few are data rows a user wants fixed, not refused: those rows are dropped, counted by reason
in the load report, and the rest loads (exit 0).
"""

import gzip
import json
import shutil
from pathlib import Path

import pytest
import yaml
from peft import LoraConfig, get_peft_model
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, modeling_utils

from pipeline.cli import main
from pipeline.locks import lock_path
from pipeline.models import require_same_vocabulary
from tests.conftest import SMOKE, ppo_args, stage_args

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def card(path: Path, front: str) -> Path:
    path.write_text(f"---\n{front}---\nWhat it is.\n")
    return path


def pair(chosen: str, rejected: str) -> dict:
    prompt = [{"role": "user", "content": "q"}]
    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    return {"prompt": prompt, "chosen": answer(chosen), "rejected": answer(rejected)}


def refused(argv: list, capsys, *culprits: str, output: Path | None = None) -> str:
    """Exit 2, one error line naming every culprit, no traceback, and no output folder left behind."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err[-2000:]
    for culprit in culprits:
        assert culprit in errors[0], errors[0]
    if output is not None:
        assert not output.exists() and not (output.parent / (output.name + ".partial") / "metrics.json").exists()
    return errors[0]


def data(card_path, files=None, split=None) -> list:
    return ["data", card_path, *(["--data_files", files] if files else []), *(["--split", split] if split else [])]


SFT_CARD = "data_cards/sandbox_sft.md"


# Data files and data cards


def test_malformed_jsonl_names_the_line(tmp_path, capsys):
    bad = jsonl(tmp_path / "train.jsonl", [GOOD, GOOD, '{"messages": [', GOOD])
    refused(data(SFT_CARD, bad), capsys, f"{bad}:3: not valid JSON")


def test_a_truncated_gzip_file(tmp_path, capsys):
    packed = gzip.compress(("\n".join(json.dumps(GOOD) for _ in range(300)) + "\n").encode())
    bad = tmp_path / "train.jsonl.gz"
    bad.write_bytes(packed[: len(packed) // 2])
    refused(data(SFT_CARD, bad), capsys, str(bad), "cannot be read")


def test_a_missing_column_leaves_nothing_to_use(tmp_path, capsys):
    bad = jsonl(tmp_path / "train.jsonl", [{"text": "no messages here"}] * 3)
    refused(data(SFT_CARD, bad), capsys, "missing_messages", "nothing left to use")


def test_a_missing_data_file(tmp_path, capsys):
    refused(data(SFT_CARD, tmp_path / "none.jsonl"), capsys, f"data file not found: {tmp_path / 'none.jsonl'}")


def test_a_missing_card(tmp_path, capsys):
    refused(data(tmp_path / "none.md"), capsys, f"data card not found: {tmp_path / 'none.md'}")


def test_a_card_without_front_matter(tmp_path, capsys):
    path = tmp_path / "card.md"
    path.write_text("Just prose.\n")
    refused(data(path), capsys, str(path), "front matter")


def test_a_card_whose_front_matter_is_not_yaml(tmp_path, capsys):
    refused(data(card(tmp_path / "card.md", "name: x\nformat: [unclosed\n")), capsys, "card.md", "not valid YAML")


def test_a_card_with_an_unknown_format(tmp_path, capsys):
    front = f"name: x\nformat: poems\nlicense: mit\nsource:\n  local:\n    train: {tmp_path}/t.jsonl\n"
    refused(data(card(tmp_path / "card.md", front)), capsys, "format 'poems' is not one of")


def test_a_card_column_mapping_to_a_missing_column(tmp_path, capsys):
    files = jsonl(tmp_path / "t.jsonl", [GOOD] * 2)
    source = f"source:\n  local:\n    train: {files}\n"
    front = f"name: x\nformat: messages\nlicense: mit\ncolumns:\n  messages: conversation\n{source}"
    refused(data(card(tmp_path / "card.md", front)), capsys, "column 'conversation'", "is not in the data")


def test_a_split_the_card_does_not_have(capsys):
    refused(data(SFT_CARD, split="test"), capsys, "no split 'test'", "['train', 'validation']")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]}, "empty_message"),
        ({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "yo"}]}, "empty_message"),
        ({"messages": [{"role": "wizard", "content": "a"}, {"role": "assistant", "content": "yo"}]}, "bad_role"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
            "last_turn_not_assistant",
        ),
    ],
)
def test_unusable_conversations_are_dropped_and_counted(row, reason, tmp_path, capsys):
    files = jsonl(tmp_path / "train.jsonl", [row, GOOD, GOOD])
    assert main(data(SFT_CARD, str(files))) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rows_in"] == 3 and report["rows_out"] == 2
    assert [key for key in report["dropped"] if reason in key] and sum(report["dropped"].values()) == 1


def test_chosen_identical_to_rejected_is_dropped_and_counted(tmp_path, capsys):
    files = jsonl(tmp_path / "train.jsonl", [pair("a", "a"), pair("a", "b"), pair("c", "d")])
    assert main(data("data_cards/ultrafeedback_binarized.md", str(files))) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rows_out"] == 2 and report["dropped"] == {"identical_chosen_rejected": 1}


# Recipes and the command line


def sft(tmp_path, **overrides) -> list:
    return stage_args("sft", SMOKE / "sft/config_smoke.yaml", output_dir=tmp_path / "out", **overrides)


def recipe(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_a_typo_in_a_recipe_suggests_the_key(tmp_path, capsys):
    text = (SMOKE / "sft/config_smoke.yaml").read_text() + "learnign_rate: 1.0e-3\n"
    refused(["sft", "--config", recipe(tmp_path, text)], capsys, "'learnign_rate'", "did you mean 'learning_rate'")


def test_a_typo_on_the_command_line_suggests_the_key(tmp_path, capsys):
    refused([*sft(tmp_path), "--lora_alpah", "8"], capsys, "'lora_alpah'", "did you mean 'lora_alpha'")


def test_a_wrong_type_in_a_recipe(tmp_path, capsys):
    text = (
        (SMOKE / "sft/config_smoke.yaml")
        .read_text()
        .replace("per_device_train_batch_size: 32", "per_device_train_batch_size: 2.5")
    )
    refused(["sft", "--config", recipe(tmp_path, text)], capsys, "'per_device_train_batch_size' expects int")


def test_a_wrong_type_on_the_command_line(tmp_path, capsys):
    refused(sft(tmp_path, learning_rate="fast"), capsys, "--learning_rate", "invalid float value: 'fast'")


@pytest.mark.parametrize(
    ("stage", "key", "value", "message"),
    [
        ("sft", "learning_rate", "-1e-3", "'learning_rate' must be > 0, got -0.001"),
        ("ppo", "cliprange", "1.5", "'cliprange' must be in (0, 1), got 1.5"),
        ("ppo", "cliprange", "0", "'cliprange' must be > 0, got 0.0"),
        ("label", "num_responses", "1", "'num_responses' must be in [2, 9], got 1"),
        ("ppo", "response_length", "0", "'response_length' must be > 0, got 0"),
        ("ppo", "temperature", "0", "'temperature' must be > 0"),
        ("label", "temperature", "0", "'temperature' must be > 0"),
        ("sft", "learning_rate", "inf", "'learning_rate' must be a finite number, got inf"),
        ("ppo", "kl_coef", "nan", "'kl_coef' must be a finite number, got nan"),
        ("sft", "lora_dropout", "1.5", "'lora_dropout' must be in [0, 1]"),
    ],
)
def test_impossible_values_name_the_key(stage, key, value, message, tmp_path, capsys):
    argv = stage_args(stage, SMOKE / f"{stage}/config_smoke.yaml", output_dir=tmp_path / "out", **{key: value})
    refused(argv, capsys, message, output=tmp_path / "out")


def test_a_ptx_coefficient_without_pretraining_text(tmp_path, capsys):
    argv = stage_args("ppo", SMOKE / "ppo/config_smoke.yaml", ptx_coef=0.5, ptx_dataset_card="null")
    refused(argv, capsys, "ptx_coef > 0 needs ptx_dataset_card")


def test_a_recipe_that_is_missing_or_not_a_mapping_or_not_yaml(tmp_path, capsys):
    refused(["sft", "--config", tmp_path / "none.yaml"], capsys, f"recipe not found: {tmp_path / 'none.yaml'}")
    refused(["sft", "--config", recipe(tmp_path, "- a\n- b\n")], capsys, "recipe.yaml", "a mapping of key: value")
    refused(["sft", "--config", recipe(tmp_path, "a: [\n")], capsys, "recipe.yaml", "not valid YAML")


def test_a_recipe_that_gives_a_key_twice(tmp_path, capsys):
    text = (SMOKE / "sft/config_smoke.yaml").read_text() + "learning_rate: 1.0\n"
    refused(["sft", "--config", recipe(tmp_path, text)], capsys, "recipe.yaml, line", "'learning_rate' is given twice")


def test_a_recipe_without_a_required_key(tmp_path, capsys):
    text = "".join(
        line for line in (SMOKE / "sft/config_smoke.yaml").read_text().splitlines(True) if "dataset_card" not in line
    )
    refused(["sft", "--config", recipe(tmp_path, text)], capsys, "lacks required key 'dataset_card'")


# Models


def test_a_missing_model_folder(tmp_path, capsys):
    refused(sft(tmp_path, model_name_or_path=tmp_path / "none"), capsys, f"model folder not found: {tmp_path / 'none'}")


def test_a_folder_that_holds_no_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    refused(
        sft(tmp_path, model_name_or_path=tmp_path / "empty"), capsys, "empty holds no model", output=tmp_path / "out"
    )


def test_a_hub_id_while_offline_says_to_use_a_local_folder(tmp_path, capsys):
    refused(sft(tmp_path, model_name_or_path="someone/some-model"), capsys, "someone/some-model", "local folder")


def test_4bit_without_lora(runs, tmp_path, capsys):
    argv = sft(tmp_path, model_name_or_path=runs / "base", load_in_4bit="true")
    refused(argv, capsys, "set use_peft: true", output=tmp_path / "out")


def without_chat_template(model: Path, copy: Path) -> Path:
    """A copy of a model folder whose tokenizer has no chat template."""
    shutil.copytree(model, copy)
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    return copy


def test_a_tokenizer_without_a_chat_template(runs, tmp_path, capsys):
    base = without_chat_template(runs / "base", tmp_path / "base")
    refused(
        sft(tmp_path, model_name_or_path=base),
        capsys,
        "has no chat template",
        "chat_template_path",
        output=tmp_path / "out",
    )


@pytest.fixture(scope="module")
def adapter(runs, tmp_path_factory) -> Path:
    """A LoRA SFT adapter on the smoke base, with its recipe as the sft stage writes it."""
    folder = tmp_path_factory.mktemp("adapter") / "sft_lora"
    base = AutoModelForCausalLM.from_pretrained(runs / "base")
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(folder)
    AutoTokenizer.from_pretrained(runs / "base").save_pretrained(folder)
    (folder / "recipe.yaml").write_text(yaml.safe_dump({"stage": "sft", "model_name_or_path": str(runs / "base")}))
    return folder


def test_an_adapter_where_a_stage_starts_from_full_weights(runs, adapter, tmp_path, capsys):
    argv = stage_args("rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=adapter, output_dir=tmp_path / "rm")
    refused(argv, capsys, f"{adapter} is a LoRA adapter (on {runs / 'base'})", "pipeline merge", output=tmp_path / "rm")


def test_merge_never_writes_over_its_adapter(adapter, capsys):
    before = sorted((p.name, p.stat().st_size) for p in adapter.iterdir())
    refused(["merge", adapter, "--output_dir", adapter], capsys, f"output_dir {adapter} is the run's input")
    assert sorted((p.name, p.stat().st_size) for p in adapter.iterdir()) == before


def test_an_adapter_whose_base_differs_from_the_recipes(runs, adapter, tmp_path, capsys):
    moved = shutil.copytree(adapter, tmp_path / "moved")
    (moved / "recipe.yaml").write_text(yaml.safe_dump({"stage": "sft", "model_name_or_path": str(runs / "sft")}))
    culprits = ("moved/adapter_config.json", f"base_model_name_or_path {runs / 'base'}", f"{runs / 'sft'}")
    refused(["merge", moved], capsys, *culprits, output=tmp_path / "moved_merged")


@pytest.mark.parametrize("stage", ["ppo", "rloo", "eval"])
def test_a_reward_model_whose_tokenizer_differs_from_the_policys(stage, models, tmp_path, capsys):
    sft, rm = models
    other = shutil.copytree(rm, tmp_path / "rm")
    tokenizer = AutoTokenizer.from_pretrained(rm)
    tokenizer.add_tokens(["zzqx"])
    tokenizer.save_pretrained(other)
    out = tmp_path / "out"
    argv = {
        "ppo": ppo_args((sft, other), out),
        "rloo": stage_args(
            "rloo", SMOKE / "rloo/config_smoke.yaml", model_name_or_path=sft, reward_model_path=other, output_dir=out
        ),
        "eval": ["eval", "--policies", f"sft={sft}", "--reward_model", other, "--output_dir", out],
    }[stage]
    refused(argv, capsys, f"the tokenizer of the reward model ({other}) differs", output=out)


def test_a_reward_model_saved_without_a_tokenizer_reads_the_policys(models, tmp_path, caplog):
    sft, rm = models
    bare = shutil.copytree(rm, tmp_path / "rm", ignore=shutil.ignore_patterns("tokenizer*", "chat_template*"))
    require_same_vocabulary(AutoTokenizer.from_pretrained(sft), str(bare), "the reward model", "the policy")
    assert f"{bare} has no tokenizer: assuming it reads the token ids of the policy" in caplog.text


# Outputs, the Hub and the other commands


def test_an_unwritable_output_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.write_text("a file, not a folder")
    refused(
        stage_args("sft", SMOKE / "sft/config_smoke.yaml", output_dir=locked / "out"),
        capsys,
        "cannot write the output folder",
    )


def test_a_full_disk_during_a_save(runs, tmp_path, capsys, monkeypatch):
    def full(*_, **__):
        raise SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    monkeypatch.setattr(modeling_utils, "safe_save_file", full)  # what a full disk makes safetensors raise
    out = tmp_path / "out"
    refused(sft(tmp_path, model_name_or_path=runs / "base"), capsys, "no space left", str(out), output=out)
    assert not lock_path(out).exists()  # the next run may start at once


def test_a_push_without_a_token(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("pipeline.hub.get_token", lambda: None)
    refused(["push", runs / "sft", "--repo_id", "user/model"], capsys, "no Hugging Face token", "HF_TOKEN")


def test_a_push_to_a_malformed_repo_id(runs, capsys):
    refused(["push", runs / "sft", "--repo_id", "no-slash"], capsys, "--repo_id must be USER/NAME")


def test_merging_full_weights(runs, capsys):
    refused(["merge", runs / "sft"], capsys, "holds full weights, not a LoRA adapter")


def test_eval_with_a_malformed_policy_or_reference(capsys):
    refused(["eval", "--policies", "sft"], capsys, "--policies takes NAME=DIR pairs, got 'sft'")
    refused(
        ["eval", "--policies", "a=/tmp/x", "--reference", "b"], capsys, "--reference 'b' is not one of the policies"
    )


# Data files that are not what they say


def test_an_empty_file_or_a_glob_that_matches_nothing(tmp_path, capsys):
    empty = tmp_path / "train.jsonl"
    empty.write_text("")
    refused(data(SFT_CARD, empty), capsys, f"{empty}: the file is empty")
    refused(data(SFT_CARD, str(tmp_path / "nothing*.jsonl")), capsys, "no file matches", "nothing*.jsonl")


def test_a_file_that_is_not_utf8_names_its_line(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(json.dumps(GOOD).encode() + b"\n\xff" + json.dumps(GOOD).encode() + b"\n")
    refused(data(SFT_CARD, bad), capsys, f"{bad}:2: not UTF-8 text (byte 0xff")


def test_a_bad_line_after_a_byte_order_mark_is_named(tmp_path, capsys):
    bad = tmp_path / "train.jsonl"
    bad.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n{bad\n")
    refused(data(SFT_CARD, bad), capsys, f"{bad}:2: not valid JSON")


def test_a_damaged_tokenizer_or_weights_file_is_named(runs, tmp_path, capsys):
    broken = shutil.copytree(runs / "sft", tmp_path / "broken")
    (broken / "tokenizer.json").write_text('{"version": "1.0", "trunc')
    evaluate = ["eval", "--policies", "--num_samples", "0", "--best_of_n", "0", "--num_prompts", "2"]
    refused([*evaluate[:2], f"sft={broken}", *evaluate[2:]], capsys, f"{broken / 'tokenizer.json'}: not valid JSON")
    cut = shutil.copytree(runs / "sft", tmp_path / "cut")
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    refused(sft(tmp_path, model_name_or_path=cut), capsys, f"the weights in {weights} cannot be read", "damaged")


# Nothing unchecked is published


def test_a_causal_lm_is_refused_as_a_reward_model_and_a_reward_model_as_a_policy(models, tmp_path, capsys):
    sft_dir, rm = models
    out = tmp_path / "out"
    refused(
        ppo_args((sft_dir, sft_dir), out, normalize_reward="false"), capsys, "not a trained reward model", output=out
    )
    evaluate = ["eval", "--policies", f"sft={sft_dir}", "--output_dir", out]
    refused([*evaluate, "--reward_model", sft_dir], capsys, f"--reward_model {sft_dir} is not a trained reward model")
    refused(["eval", "--policies", f"rm={rm}", "--output_dir", out], capsys, f"{rm} is a reward model")


def test_weights_that_training_made_nan_are_not_published(runs, tmp_path, capsys, monkeypatch):
    train = Trainer.train

    def spoiled(self, *args, **kwargs):  # a last step that turns a weight to NaN, after every logged check
        result = train(self, *args, **kwargs)
        next(self.model.parameters()).data.fill_(float("nan"))
        return result

    monkeypatch.setattr(Trainer, "train", spoiled)
    out = tmp_path / "out"
    argv = sft(tmp_path, model_name_or_path=runs / "base", max_steps=1, sandbox_eval_prompts=0)
    refused(argv, capsys, "is not finite (NaN or inf): nothing is published", output=out)
    assert (tmp_path / "out.partial").is_dir()  # the run is kept for a look


def test_a_reward_model_with_no_pair_that_fits_max_length(runs, tmp_path, capsys):
    out = tmp_path / "rm"
    argv = stage_args(
        "rm", SMOKE / "rm/config_smoke.yaml", model_name_or_path=runs / "sft", output_dir=out, max_length=8
    )
    refused([*argv, "--dataset_test_split", "null"], capsys, "no training row is left", "max_length", output=out)


def test_held_out_figures_are_never_measured_on_training_rows(runs, tmp_path, capsys):
    rows = jsonl(tmp_path / "pairs.jsonl", [pair(f"yes {i}", f"no {i}") for i in range(20)])
    out = tmp_path / "rm"
    card = "data_cards/ultrafeedback_binarized.md"
    keys = {"model_name_or_path": runs / "sft", "output_dir": out, "dataset_card": card, "data_files": rows}
    argv = stage_args("rm", SMOKE / "rm/config_smoke.yaml", **keys)
    refused(argv, capsys, "share rows", "train[:90%]", output=out)
    refused([*argv, "--dataset_train_split", "train[:12]", "--dataset_test_split", "train[10:]"], capsys, "share rows")


def test_preference_rows_that_mix_messages_and_text(tmp_path, capsys):
    rows = jsonl(tmp_path / "pairs.jsonl", [pair("a", "b"), {"prompt": "q", "chosen": "a", "rejected": "b"}])
    refused(data("data_cards/ultrafeedback_binarized.md", rows), capsys, "usable row 2 has text in 'prompt'")


def test_a_size_below_one_in_a_command(runs, tmp_path, capsys):
    refused([*data(SFT_CARD), "--max_rows", "0"], capsys, "--max_rows must be at least 1, got 0")
    evaluate = ["eval", "--policies", f"sft={runs / 'sft'}", "--output_dir", tmp_path / "e"]
    refused([*evaluate, "--num_prompts", "0"], capsys, "--num_prompts must be at least 1")
    refused([*evaluate, "--num_samples", "-1"], capsys, "--num_samples must be 0 or more")


def test_an_option_given_twice(runs, tmp_path, capsys):
    # argparse would keep the last: the first policy, and every comparison with it, would vanish
    twice = ["eval", "--policies", f"sft={runs / 'sft'}", "--policies", f"base={runs / 'base'}"]
    refused([*twice, "--output_dir", tmp_path / "e"], capsys, "--policies is given twice")
    refused(["sft", "--config", SMOKE / "sft/config_smoke.yaml", "--config=x.yaml"], capsys, "--config is given twice")


def test_ppo_with_fewer_episodes_than_one_rollout_or_only_warm_up_updates(models, tmp_path, capsys):
    refused(ppo_args(models, tmp_path / "ppo", total_episodes=1), capsys, "total_episodes (1) is less than one rollout")
    warmup = ppo_args(models, tmp_path / "ppo", critic_warmup_updates=4)  # the smoke recipe's 4 updates
    refused(warmup, capsys, "critic_warmup_updates (4) leaves none of the run's 4 updates")


def test_lora_target_modules_the_model_lacks_are_listed_with_those_it_has(runs, tmp_path, capsys):
    argv = [*sft(tmp_path, model_name_or_path=runs / "base", use_peft="true"), "--lora_target_modules", "qkv", "q_proj"]
    refused(argv, capsys, "['qkv'] are not layers", "'v_proj'")


def test_a_tracker_that_is_misspelt_or_not_installed(tmp_path, capsys):
    refused(sft(tmp_path, report_to="tensorbord"), capsys, "'tensorbord' is no tracker", "did you mean 'tensorboard'")
    refused(sft(tmp_path, report_to="clearml"), capsys, "'clearml': the clearml package is not installed")


def test_a_push_while_offline_says_so(runs, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_FakeTokenNeverSent")  # the suite runs with HF_HUB_OFFLINE=1 (conftest)
    refused(["push", runs / "sft", "--repo_id", "user/model"], capsys, "could not reach the Hub", "--dry_run")


# Files read with limits: text as UTF-8, YAML bounded, JSON named (pipeline/reading.py)


def bomb(levels: int = 6) -> str:
    """YAML of a few lines whose aliases stand for 9 ** levels values."""
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_recipes_and_cards_that_are_not_utf8_or_not_text_keyed_or_alias_bombs(tmp_path, capsys):
    latin = tmp_path / "recipe.yaml"
    latin.write_bytes((SMOKE / "sft/config_smoke.yaml").read_bytes() + "# caf\xe9\n".encode("latin-1"))
    refused(["sft", "--config", latin], capsys, str(latin), "not UTF-8 text (byte 0xe9")
    text = (SMOKE / "sft/config_smoke.yaml").read_text()
    refused(["sft", "--config", recipe(tmp_path, text + "1: one\n")], capsys, "recipe.yaml, line", "key 1 is not text")
    refused(["sft", "--config", recipe(tmp_path, bomb())], capsys, "recipe.yaml", "aliases expand it past 100,000")
    prose = tmp_path / "card.md"
    prose.write_bytes(b"---\nname: x\nformat: messages\nlicense: mit\nsource:\n  local: {}\n---\ncaf\xe9\n")
    refused(data(prose), capsys, str(prose), "not UTF-8 text")
    refused(data(card(tmp_path / "bomb.md", bomb())), capsys, "bomb.md (front matter)", "aliases expand it")


@pytest.mark.parametrize(
    ("front", "message"),
    [
        ("source:\n  local: [a.jsonl, b.jsonl]\n", "local must map names to text"),
        ("source:\n  local: {train: t.jsonl}\ncolumns: [messages]\n", "columns must map names to text"),
        ("source:\n  local: {train: t.jsonl}\nlicense:\n", "license is empty"),
    ],
)
def test_card_fields_of_the_wrong_shape(front, message, tmp_path, capsys):
    front = front if "license" in front else front + "license: mit\n"
    refused(data(card(tmp_path / "card.md", "name: x\nformat: messages\n" + front)), capsys, "card.md", message)


def test_a_margin_that_is_not_a_number_is_dropped_and_counted(tmp_path, capsys):
    rows = [{**pair("a", "b"), "margin": "big"}, {**pair("a", "b"), "margin": 1.5}, pair("c", "d")]
    assert main(data("data_cards/ultrafeedback_binarized.md", str(jsonl(tmp_path / "train.jsonl", rows)))) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["rows_out"] == 2 and report["dropped"] == {"bad_margin": 1}


def test_a_chat_template_path_that_is_missing_or_not_jinja(runs, tmp_path, capsys):
    args = sft(tmp_path, model_name_or_path=runs / "base")
    missing = tmp_path / "none.jinja"
    refused(
        [*args, "--chat_template_path", missing],
        capsys,
        f"chat_template_path {missing}: no such file",
        output=tmp_path / "out",
    )
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content")
    refused(
        [*args, "--chat_template_path", broken], capsys, f"{broken} is not valid Jinja (line 1", output=tmp_path / "out"
    )


def test_eval_of_a_policy_without_a_chat_template(runs, tmp_path, capsys):
    bare = without_chat_template(runs / "sft", tmp_path / "bare")
    out = tmp_path / "eval"
    refused(
        ["eval", "--policies", f"bare={bare}", "--output_dir", out], capsys, "bare has no chat template", output=out
    )
    assert not (tmp_path / "eval.partial").exists()


def test_damaged_json_in_a_model_folder_is_named(runs, tmp_path, capsys):
    config = shutil.copytree(runs / "sft", tmp_path / "config")
    (config / "config.json").write_text('{"model_type": ')
    out = tmp_path / "eval"
    refused(
        ["eval", "--policies", f"p={config}", "--output_dir", out], capsys, f"{config / 'config.json'}: not valid JSON"
    )
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{")
    refused(["merge", adapter], capsys, f"{adapter / 'adapter_config.json'}: not valid JSON")
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    refused(["merge", adapter], capsys, "adapter_config.json names no base_model_name_or_path")


def test_damaged_recipe_or_metrics_in_an_output_are_named(runs, tmp_path, capsys):
    for name, text in (("recipe.yaml", "a: [\n"), ("metrics.json", "{")):
        run = shutil.copytree(runs / "sft", tmp_path / name)
        (run / name).write_text(text)
        dry = ["push", run, "--repo_id", "user/model", "--dry_run", tmp_path / f"dry-{name}"]
        refused(dry, capsys, str(run / name), "not valid")


def test_a_file_that_is_not_gguf(tmp_path, capsys):
    fake = tmp_path / "model.gguf"
    fake.write_text("hello")
    out = tmp_path / "out"
    refused(["import-gguf", fake, "--output_dir", out], capsys, f"{fake} is not a GGUF file", output=out)
    assert not (tmp_path / "out.partial").exists()


def test_a_malformed_chain_file_leaves_the_other_chains_and_is_named(tmp_path, monkeypatch, capsys):
    from pipeline import chain

    for world, text in (("good", "name: good\nfolder: out\nsteps:\n  - command: [eval]\n"), ("bad", ": : [\n")):
        (tmp_path / "recipes" / world).mkdir(parents=True)
        (tmp_path / "recipes" / world / "chain.yaml").write_text(text)
    monkeypatch.chdir(tmp_path)
    files, broken = chain.chain_files()
    assert list(files) == ["good"] and len(broken) == 1 and "recipes/bad/chain.yaml: not valid YAML" in broken[0]
    refused(["demo", "--chain", "other"], capsys, "no chain 'other'; the chains are good", "recipes/bad/chain.yaml")


def test_sft_counts_the_rows_that_do_not_fit_max_length(runs, tmp_path, caplog):
    # the smoke SFT prompts are 10-34 tokens: at 16, TRL drops the rows whose answer lies wholly past max_length
    argv = sft(tmp_path, model_name_or_path=runs / "base", max_steps=1, max_length=16, max_train_samples=64)
    assert main([*argv, "--sandbox_eval_prompts", "0", "--max_eval_samples", "8"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 < metrics["train_rows_too_long"] < 64 and metrics["train_rows"] + metrics["train_rows_too_long"] == 64
    assert f"{metrics['train_rows_too_long']} of 64 training rows do not fit max_length (16)" in caplog.text
