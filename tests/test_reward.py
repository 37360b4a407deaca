import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from pipeline.data import load_card
from pipeline.data.formats import Drop, ranked
from pipeline.reward import GroupedBatchSampler, _OncePerSequence, spearman
from pipeline.sandbox import Labeler
from pipeline.sandbox.comparisons import contrast_pair, ranked_row
from pipeline.sandbox.tasks import parse_prompt

USER = [{"role": "user", "content": "Add 1 and 2."}]


def reply(text):
    return [{"role": "assistant", "content": text}]


def test_ranked_list_of_four_expands_to_six_ordered_pairs():
    pairs = ranked({"prompt": USER, "responses": [reply("3"), reply("Sure! 3"), reply("4"), reply("x")]})
    assert len(pairs) == 6
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("3", "Sure! 3"), ("3", "4"), ("3", "x"), ("Sure! 3", "4"), ("Sure! 3", "x"), ("4", "x"),
    ]  # fmt: skip


def test_identical_responses_in_a_list_are_dropped_pairs():
    pairs = ranked({"prompt": USER, "responses": [reply("3"), reply("3"), reply("4")]})
    assert sum(isinstance(p, Drop) for p in pairs) == 1 and len(pairs) == 3


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"responses": [reply("3"), reply("4")]}, "missing_prompt"),
        ({"prompt": USER, "responses": [reply("3")]}, "fewer_than_2_responses"),
        ({"prompt": USER, "responses": [reply("3"), ""]}, "empty_response"),
        ({"prompt": USER, "responses": [reply("3"), reply(" ")]}, "empty_message_in_responses"),
    ],
)
def test_bad_ranked_rows_name_their_reason(row, reason):
    with pytest.raises(Drop, match=reason):
        ranked(row)


def test_loader_groups_pairs_and_counts_bad_rows(tmp_path):
    import json

    rows = [
        {"prompt": USER, "responses": [reply("3"), reply("Sure! 3"), reply("4"), reply("x")]},
        {"prompt": USER, "responses": [reply("3"), reply("3")]},
        {"responses": [reply("3"), reply("4")]},
        {"prompt": USER, "responses": [reply("3"), reply("")]},
        {"prompt": USER, "responses": [reply("5"), reply("6"), reply("7"), reply("8")]},
    ]
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset, report = load_card("data_cards/sandbox_comparisons.md", data_files=str(path))
    assert report.rows_in == 5 and report.rows_out == 12
    assert report.dropped == {"identical_chosen_rejected": 1, "missing_prompt": 1, "empty_message_in_responses": 1}
    assert dataset["group"] == [0] * 6 + [4] * 6


def test_grouped_batches_never_split_a_ranking():
    groups = [0] * 6 + [1] * 3 + [2] * 6 + [3] * 1 + [4] * 10 + [5] * 6
    sampler = GroupedBatchSampler(groups, batch_size=12, seed=0)
    first, second = list(sampler), list(sampler)
    assert len(first) == len(sampler) == len(second)
    assert sorted(i for batch in first for i in batch) == list(range(len(groups)))
    for batch in first:
        assert len(batch) <= 12
        for group in {groups[i] for i in batch}:
            assert sum(groups[i] == group for i in batch) == groups.count(group)
    assert first != second  # the batch order is reshuffled on every pass


def test_a_group_larger_than_the_batch_stays_whole():
    sampler = GroupedBatchSampler([7] * 15 + [8] * 2, batch_size=12, seed=0)
    assert sorted(len(b) for b in sampler) == [2, 15]


def test_spearman_hand_computed():
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share the average rank: x ranks (1.5, 1.5, 3), y ranks (1, 2, 3)
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(0.8660254)
    assert spearman([1, 1, 1], [1, 2, 3]) == 0.0


def test_ranked_row_keeps_the_judges_scores_in_ranked_order():
    row = ranked_row("Add 1 and 2.", ["4", "3", "Sure! 3"], [True] * 3, Labeler(temperature=0), "static")
    assert [r[0]["content"] for r in row["responses"]] == ["3", "Sure! 3", "4"]
    assert row["gold"] == sorted(row["gold"], reverse=True) and row["family"] == "add"


def test_contrast_pairs_differ_only_in_correctness():
    import random

    from pipeline.sandbox import gold_components

    rng = random.Random(0)
    made = 0
    for prompt in [
        "Add 12 and 30.",
        "Give an even number between 3 and 9.",
        "Name a word that starts with c and ends with t.",
    ]:
        for _ in range(20):
            pair = contrast_pair(parse_prompt(prompt), rng)
            if pair:
                made += 1
                right, wrong = (gold_components(prompt, text) for text in pair)
                assert right["style"] == wrong["style"] and right["correctness"] > wrong["correctness"]
    assert made >= 30


def test_each_distinct_sequence_is_scored_once_with_the_same_scores_and_gradients():
    config = LlamaConfig(
        vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_labels=1, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    a, b, c, d = [5, 6, 7, 0], [5, 6, 8, 9], [5, 6, 0, 0], [5, 6, 9, 9]
    # A K = 4 ranking's 6 pairs as TRL's collator lays them out: the chosen rows, then the rejected rows
    chosen, rejected = [a, a, a, b, b, c], [b, c, d, c, d, d]
    input_ids = torch.tensor(chosen + rejected)
    batch = {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}
    calls = []
    model.register_forward_hook(lambda _, args, kwargs, out: calls.append(len(kwargs["input_ids"])), with_kwargs=True)
    weights = torch.arange(12.0)

    model(**batch).logits.squeeze(-1).mul(weights).sum().backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = _OncePerSequence(model)(**batch).logits
    logits.squeeze(-1).mul(weights).sum().backward()

    assert calls == [12, 4]
    torch.testing.assert_close(logits, model(**batch).logits)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], msg=name)


def test_gold_agreement_is_split_by_what_sets_two_responses_apart(monkeypatch):
    from pipeline import reward_evaluation as eval_rm

    # a > b by correctness alone, a > c by style alone, b > c by both; the RM gets only the first wrong
    row = {
        "prompt": USER,
        "responses": [reply("3"), reply("4"), reply("Sure! 3")],
        "gold": [0.9, 0.6, 0.5],
        "correctness": [1.0, 0.4, 1.0],
        "style": [0.8, 0.8, 0.0],
        "family": "add",
        "labeler_temperature": 0.1,
    }
    same = {**row, "responses": [reply("3"), reply("3")], "gold": [0.9, 0.9], "correctness": [1, 1], "style": [1, 1]}
    monkeypatch.setattr(eval_rm, "reward_scores", lambda *args, **kwargs: [0.0, 1.0, -1.0, 0.5, 0.5])
    found = eval_rm.evaluate_reward_model(None, None, [row, same])
    assert found["eval_pairs"] == 3 and found["eval_accuracy"] == pytest.approx(2 / 3)
    assert found["gold_order_agreement"] == pytest.approx(2 / 3)
    assert found["gold_order_agreement_by_difference"] == {"correctness": 0.0, "style": 1.0, "both": 1.0}
