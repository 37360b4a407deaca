import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.data import DataError, load_card, read_card

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "data_cards"
FIXTURES = Path(__file__).parent / "fixtures"
HH = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.mark.parametrize("card", sorted(CARDS.glob("*.md")))
def test_every_card_has_front_matter_and_prose(card):
    parsed = read_card(card)
    assert parsed.name and parsed.license and parsed.split_names
    prose = card.read_text().split("\n---", 1)[1]
    for section in ("What it is", "Caveats", "Intended use"):
        assert section in prose, f"{card.name} lacks a '{section}' paragraph"


@pytest.mark.skipif(not HH.exists(), reason="needs ../shared/data/hh-rlhf")
def test_hh_rlhf_real_file_parses_into_conversational_pairs():
    dataset, report = load_card(CARDS / "hh_rlhf.md", data_files=str(HH))
    assert report.rows_in == 2312
    assert report.rows_out + sum(report.dropped.values()) == report.rows_in
    assert report.dropped.get("prompt_mismatch", 0) > 0  # counted, not mangled
    row = dataset[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][-1]["role"] == "user"
    assert [m["role"] for m in row["chosen"]] == ["assistant"] and [m["role"] for m in row["rejected"]] == ["assistant"]
    assert row["chosen"] != row["rejected"]
    assert "Human:" not in row["prompt"][0]["content"]


def test_hh_rlhf_chosen_reads_the_chosen_transcript_as_prompt_and_completion():
    from pipeline.data.formats import hh_rlhf_chosen

    row = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye?\n\nAssistant: Bye!", "rejected": "x"}
    assert hh_rlhf_chosen(row) == {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye?"},
        ],
        "completion": [{"role": "assistant", "content": "Bye!"}],
    }


@pytest.mark.skipif(not HH.exists(), reason="needs ../shared/data/hh-rlhf")
def test_hh_rlhf_chosen_card_on_the_real_file():
    dataset, report = load_card(CARDS / "hh_rlhf_chosen.md", "train[:100]", data_files=str(HH))
    assert report.format == "prompt_completion" and report.rows_out + sum(report.dropped.values()) == 100
    assert all(row["prompt"][-1]["role"] == "user" for row in dataset)
    assert all([m["role"] for m in row["completion"]] == ["assistant"] for row in dataset)


def test_ultrachat_fixture():
    dataset, report = load_card(CARDS / "ultrachat_200k.md", data_files=str(FIXTURES / "ultrachat_200k.jsonl"))
    assert report.format == "conversational" and dataset.column_names == ["messages"]
    assert (report.rows_in, report.rows_out) == (4, 2)
    assert report.dropped == {"no_assistant_turn": 1, "bad_role_in_messages": 1}


def test_ultrafeedback_fixture_splits_the_implicit_prompt():
    dataset, report = load_card(
        CARDS / "ultrafeedback_binarized.md", data_files=str(FIXTURES / "ultrafeedback_binarized.jsonl")
    )
    assert report.dropped == {"identical_chosen_rejected": 1, "prompt_mismatch": 1}
    assert dataset[0]["prompt"] == [{"role": "user", "content": "Name a prime number."}]
    assert dataset[0]["chosen"] == [{"role": "assistant", "content": "7 is prime."}]


def test_a_mapped_margin_column_is_kept(tmp_path):
    from pipeline.data.formats import preference

    row = {"prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2}
    assert preference(row) == {"prompt": "Q", "chosen": "good", "rejected": "bad", "margin": 2.0}


def test_tldr_fixture_is_standard_prompt_completion():
    dataset, report = load_card(CARDS / "tldr.md", data_files=str(FIXTURES / "tldr.jsonl"))
    assert report.format == "prompt_completion" and report.dropped == {"empty_completion": 1}
    assert dataset[0]["prompt"].endswith("TL;DR:")


def test_sandbox_cards_generate_and_load():
    sft, report = load_card(CARDS / "sandbox_sft.md", "validation")
    assert report.dropped == {} and report.rows_out == 280
    assert [m["role"] for m in sft[0]["messages"]] == ["user", "assistant"]
    prompts, _ = load_card(CARDS / "sandbox_prompts.md", "test", max_rows=10)
    assert prompts.column_names == ["prompt"] and prompts[0]["prompt"][0]["role"] == "user"


def test_unknown_split_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"no split 'dev'; the card has \['train', 'validation'\]"):
        load_card(CARDS / "sandbox_sft.md", "dev")
    with pytest.raises(DataError, match="data file not found"):
        load_card(CARDS / "tldr.md", data_files=str(tmp_path / "none.jsonl"))
    with pytest.raises(DataError, match="data card not found"):
        read_card(tmp_path / "missing.md")


def test_card_errors_name_the_problem(tmp_path):
    card = tmp_path / "bad.md"
    card.write_text("---\nname: bad\nformat: parquetish\nlicense: mit\nsource: {hub: x/y}\n---\nprose\n")
    with pytest.raises(DataError, match="format 'parquetish' is not one of"):
        read_card(card)
    card.write_text("---\nname: bad\nformat: text\nlicense: mit\nsource: {hub: x/y, local: {train: a}}\n---\n")
    with pytest.raises(DataError, match="exactly one of 'hub' or 'local'"):
        read_card(card)


def test_hub_source_offline_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match=r"could not load trl-lib/tldr \[train\] from the Hub.*--data_files"):
        load_card(CARDS / "tldr.md")


def test_data_command_prints_one_json_object(capsys, tmp_path):
    code = main(
        ["data", str(CARDS / "tldr.md"), "--data_files", str(FIXTURES / "tldr.jsonl"), "--output_dir", str(tmp_path)]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows_in"] == 3 and out["rows_out"] == 2 and out["dropped"] == {"empty_completion": 1}
    assert out["format"] == "prompt_completion" and "prompt" in out["first_example"]
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 2


def test_data_command_error_exits_nonzero(capsys):
    assert main(["data", "data_cards/nope.md"]) == 2
    assert "error: data card not found" in capsys.readouterr().err
