"""Long conversations cut to `max_length` by one stated rule: a prompt loses its earliest turns.

TRL's RewardTrainer silently drops pairs longer than `max_length` and SFTTrainer cuts a completion's
end; in multi-turn data (hh-rlhf) what matters is the last turns and the response. So a row whose
chat-templated prompt + response (the longer one of a pair) exceeds `max_length` loses the prompt's
earliest turns (a leading system turn stays), until it fits with a user turn first. A row that does
not fit even with its last user turn alone is dropped. Both are counted in the log.
"""

from __future__ import annotations

import logging

import datasets
from transformers import PreTrainedTokenizerBase

from pipeline.data.cards import DataError

logger = logging.getLogger(__name__)
RESPONSE_COLUMNS = ("completion", "chosen", "rejected")


def templated_length(tokenizer: PreTrainedTokenizerBase, conversation: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"])


def keep_last_turns(
    prompt: list[dict], responses: list[list[dict]], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[dict] | None:
    """The shortest cut of `prompt` from the left after which every response fits; None when none fits."""
    system, turns = (prompt[:1], prompt[1:]) if prompt and prompt[0]["role"] == "system" else ([], prompt)
    for start, turn in enumerate(turns):
        if turn["role"] != "user":
            continue
        kept = system + turns[start:]
        if all(templated_length(tokenizer, kept + response) <= max_length for response in responses):
            return kept
    return None


def fit_prompts(
    dataset: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int, where: str
) -> datasets.Dataset:
    """`dataset` (conversational prompt + completion, or prompt + chosen + rejected) with every row fitting `max_length`."""
    columns = [name for name in RESPONSE_COLUMNS if name in dataset.column_names]
    rows, cut, dropped = [], 0, 0
    for row in dataset:
        kept = keep_last_turns(row["prompt"], [row[name] for name in columns], tokenizer, max_length)
        if kept is None:
            dropped += 1
            continue
        cut += len(kept) < len(row["prompt"])
        rows.append({**row, "prompt": kept})
    logger.info(
        "%s: %d of %d rows longer than max_length (%d tokens) lost their prompt's earliest turns; "
        "%d dropped (too long even with the last user turn alone)",
        where,
        cut,
        len(dataset),
        max_length,
        dropped,
    )
    if not rows:
        raise DataError(f"{where}: no row fits max_length {max_length}, even with its last user turn alone")
    return datasets.Dataset.from_list(rows)
