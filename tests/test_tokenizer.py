import pytest

from pipeline.sandbox.tokenizer import train_tokenizer

TEXTS = ["<s><|user|>Reverse the word tree.<|assistant|>Sure! eert"] * 5 + ["The reverse of cat is tac."] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, min_count=5)


def test_instruction_words_are_tokens_and_world_words_are_letters(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("Reverse the word tree.")["input_ids"])
    assert tokens[:2] == ["ĠReverse", "Ġthe"]
    assert tokens[-5:] == ["t", "r", "e", "e", "."]  # a sandbox word stays letter by letter
    assert "Ġword" not in tokenizer.get_vocab()  # "word" is also a sandbox word
    assert "ĠSure" in tokenizer.get_vocab() and "Ġsure" not in tokenizer.get_vocab()


def test_digits_are_single_tokens(tokenizer):
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("40 plus 57")["input_ids"])
    assert tokens == ["Ġ", "4", "0", "Ġ", "p", "l", "u", "s", "Ġ", "5", "7"]


def test_chat_template_marks_the_assistant_turn(tokenizer):
    messages = [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assistant = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tokenizer.decode(assistant[:-1]).strip() == "3" and assistant[-1] == tokenizer.eos_token_id
    prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
    assert prompt == "<s><|user|>Add 1 and 2.<|assistant|>"


def test_round_trip_and_special_tokens(tokenizer, tmp_path):
    text = "Sure! CASH Hope this helps!"
    assert tokenizer.decode(tokenizer(text)["input_ids"]).strip() == text
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<s>", "</s>")
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"] and again.chat_template == tokenizer.chat_template
