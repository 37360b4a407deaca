"""Long conversations: a prompt loses its earliest turns until prompt + response fit max_length."""

import datasets
import pytest
from transformers import AutoTokenizer

from pipeline.data import DataError
from pipeline.data.fitting import fit_prompts, keep_last_turns, templated_length


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tokenizer(runs):
    return AutoTokenizer.from_pretrained(runs / "base")


def test_the_earliest_turns_go_first_and_a_system_turn_stays(tokenizer):
    system = {"role": "system", "content": "be brief"}
    early = [user("add 1 and 2 " * 20), assistant("3")]
    last = [user("add 4 and 5")]
    chosen, rejected = [assistant("9")], [assistant("the answer is 10, I think")]
    whole = [system, *early, *last]
    limit = templated_length(tokenizer, [system, *last, *rejected])  # fits only without the early turns
    assert templated_length(tokenizer, whole + rejected) > limit
    assert keep_last_turns(whole, [chosen, rejected], tokenizer, limit) == [system, *last]
    assert keep_last_turns(whole, [chosen, rejected], tokenizer, limit - 1) is None  # the longer response decides
    assert keep_last_turns(whole, [chosen], tokenizer, limit - 1) == [system, *last]
    assert keep_last_turns(whole, [chosen, rejected], tokenizer, 10_000) == whole


def test_fit_prompts_counts_what_it_cut_and_dropped(tokenizer, caplog):
    short = {"prompt": [user("hi")], "completion": [assistant("yo")]}
    long_prompt = {"prompt": [user("word " * 60), assistant("ok"), user("hi")], "completion": [assistant("yo")]}
    long_answer = {"prompt": [user("hi")], "completion": [assistant("word " * 60)]}
    limit = templated_length(tokenizer, short["prompt"] + short["completion"]) + 2
    rows = datasets.Dataset.from_list([short, long_prompt, long_answer])
    with caplog.at_level("INFO"):
        fitted = fit_prompts(rows, tokenizer, limit, "card [train]")
    assert [row["prompt"] for row in fitted] == [[user("hi")], [user("hi")]]
    assert f"card [train]: 1 of 3 rows longer than max_length ({limit} tokens)" in caplog.text
    assert "1 dropped (too long even with the last user turn alone)" in caplog.text
    with pytest.raises(DataError, match="card \\[train\\]: no row fits max_length 3"):
        fit_prompts(rows, tokenizer, 3, "card [train]")
