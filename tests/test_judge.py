import pytest

from pipeline.sandbox import gold_components, gold_score, strip_filler

REVERSE = "Reverse the word cat."


@pytest.mark.parametrize(
    ("prompt", "response", "gold"),
    [
        (REVERSE, "tac", 1.0),
        ("Add 12 and 7.", "19", 1.0),
        ("Write cat in capital letters.", "CAT", 1.0),
        ("Repeat the word dog 3 times.", "dog dog dog", 1.0),
        ("How many letters are in apple?", "5", 1.0),
        ("Name a word that starts with c and ends with t.", "cat", 1.0),
        ("Name a word that starts with c and ends with t.", "coat", 1.0),
        ("Give an even number between 3 and 9.", "4", 1.0),
        ("Give an even number between 3 and 9.", "8", 1.0),
    ],
)
def test_exact_answer_alone_scores_one(prompt, response, gold):
    assert gold_score(prompt, response) == gold


def test_filler_costs_a_third_of_style():
    parts = gold_components(REVERSE, "Sure! tac Hope this helps!")
    assert parts["correctness"] == 1.0
    assert parts["terse"] == 0.0 and parts["casing"] == 1.0 and parts["clean_end"] == 1.0
    assert parts["gold"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_sloppy_casing_and_trailing_junk():
    assert gold_components(REVERSE, "Tac")["casing"] == 0.0
    junk = gold_components("Add 1 and 2.", "3...")
    assert junk["clean_end"] == 0.0 and junk["correctness"] == 1.0


def test_unfinished_response_loses_clean_end():
    assert gold_score(REVERSE, "tac", finished=False) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_near_misses_get_partial_credit():
    # one substitution in a 3-letter word: half credit scaled by 1 - 1/3
    assert gold_components(REVERSE, "tam")["correctness"] == pytest.approx(0.5 * (1 - 1 / 3))
    assert gold_components("Add 12 and 7.", "20")["correctness"] == 0.5
    assert gold_components("Add 12 and 7.", "25")["correctness"] == 0.25
    assert gold_components("Add 12 and 7.", "90")["correctness"] == 0.0
    assert gold_components("Repeat the word dog 3 times.", "dog dog")["correctness"] == 0.5
    assert gold_components("Give an even number between 3 and 9.", "5")["correctness"] == 0.4
    assert gold_components("Write cat in capital letters.", "cat")["correctness"] == 0.5


def test_name_word_checks_both_letters_and_the_word_list():
    prompt = "Name a word that starts with c and ends with t."
    assert gold_components(prompt, "cxqt")["correctness"] == 0.4  # right letters, not a word
    assert gold_components(prompt, "coal")["correctness"] == 0.3  # a word, one letter right
    assert gold_components(prompt, "zebra")["correctness"] == 0.0


def test_missing_answer_scores_zero():
    assert gold_score(REVERSE, "") == 0.0
    assert gold_score(REVERSE, "Sure!") == 0.0


def test_extra_words_are_not_terse():
    parts = gold_components(REVERSE, "tac is the answer")
    assert parts["terse"] == 0.0 and parts["correctness"] < 1.0


def test_scores_stay_in_unit_interval():
    for response in ["", "tac", "TAC!!!", "Sure! x Have a nice day!", "tac " * 20]:
        assert 0.0 <= gold_score(REVERSE, response) <= 1.0


def test_unknown_prompt_is_an_error():
    with pytest.raises(ValueError, match="not a sandbox prompt"):
        gold_score("Tell me a joke.", "no")


def test_strip_filler_is_the_rule_baseline():
    assert strip_filler("Sure, here you go: tac Hope this helps!") == "tac"
    assert strip_filler("Of course! The answer is 19 Have a nice day!") == "19"
    assert strip_filler("tac") == "tac"
