"""Raw dataset rows -> the canonical formats (TRL's vocabulary; the README's "Data cards" section).

Each converter takes one raw row (already renamed by the card's column mapping) and returns one
canonical row, or raises Drop with the reason, which the loader counts and reports. A ranked list
expands to several rows, one per pair, some of which may be Drops.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

ROLES = {"system", "user", "assistant"}


class Drop(Exception):
    """This row cannot be used; the message is the reason, counted per reason."""


def _field(row: dict, name: str) -> Any:
    if name not in row or row[name] is None:
        raise Drop(f"missing_{name}")
    value = row[name]
    if isinstance(value, str) and not value.strip() or isinstance(value, list) and not value:
        raise Drop(f"empty_{name}")
    return value


def _messages(value: Any, name: str) -> list[dict]:
    """A list of {role, content} with known roles and non-empty content."""
    if not isinstance(value, list):
        raise Drop(f"bad_{name}")
    out = []
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise Drop(f"bad_role_in_{name}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise Drop(f"empty_message_in_{name}")
        out.append({"role": message["role"], "content": content})
    return out


def _text_or_messages(value: Any, name: str) -> str | list[dict]:
    return value if isinstance(value, str) else _messages(value, name)


def text(row: dict) -> dict:
    value = _field(row, "text")
    if not isinstance(value, str):
        raise Drop("bad_text")
    return {"text": value}


def messages(row: dict) -> dict:
    conversation = _messages(_field(row, "messages"), "messages")
    if not any(m["role"] == "assistant" for m in conversation):
        raise Drop("no_assistant_turn")
    if conversation[-1]["role"] != "assistant":
        raise Drop("last_turn_not_assistant")  # nothing to learn after the last assistant turn
    return {"messages": conversation}


def prompt_completion(row: dict) -> dict:
    prompt = _text_or_messages(_field(row, "prompt"), "prompt")
    completion = _text_or_messages(_field(row, "completion"), "completion")
    if isinstance(prompt, str) != isinstance(completion, str):
        raise Drop("mixed_text_and_messages")
    return {"prompt": prompt, "completion": completion}


def messages_last_turn(row: dict) -> dict:
    """A conversation as TRL's prompt-completion pair: every turn before the last, and the last assistant turn.

    SFT then learns the last turn only (completion-only loss) with any chat template, including one
    without the `{% generation %}` markers that assistant-only loss on `messages` needs.
    """
    conversation = messages(row)["messages"]
    return {"prompt": conversation[:-1], "completion": conversation[-1:]}


def prompt_only(row: dict) -> dict:
    return {"prompt": _text_or_messages(_field(row, "prompt"), "prompt")}


def _split_shared_prompt(chosen: list[dict], rejected: list[dict]) -> dict:
    """Implicit-prompt pairs: both conversations share every turn but the last assistant one."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise Drop("last_turn_not_assistant")
    if chosen[:-1] != rejected[:-1]:
        raise Drop("prompt_mismatch")
    if not chosen[:-1]:
        raise Drop("empty_prompt")
    return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}


def preference(row: dict) -> dict:
    chosen = _text_or_messages(_field(row, "chosen"), "chosen")
    rejected = _text_or_messages(_field(row, "rejected"), "rejected")
    if "prompt" in row and row["prompt"] is not None:
        pair = {"prompt": _text_or_messages(_field(row, "prompt"), "prompt"), "chosen": chosen, "rejected": rejected}
        if isinstance(pair["prompt"], list) and pair["chosen"][: len(pair["prompt"])] == pair["prompt"]:
            pair["chosen"], pair["rejected"] = chosen[len(pair["prompt"]) :], rejected[len(pair["prompt"]) :]
    elif isinstance(chosen, list) and isinstance(rejected, list):
        pair = _split_shared_prompt(chosen, rejected)
    else:
        raise Drop("missing_prompt")
    if pair["chosen"] == pair["rejected"]:
        raise Drop("identical_chosen_rejected")
    if not pair["chosen"] or not pair["rejected"]:
        raise Drop("empty_response")
    if row.get("margin") is not None:  # how much better chosen is; RewardTrainer subtracts it in the loss
        if not isinstance(row["margin"], int | float) or isinstance(row["margin"], bool):
            raise Drop("bad_margin")
        pair["margin"] = float(row["margin"])
    return pair


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _parse_hh(transcript: str) -> list[dict]:
    parts = _HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise Drop("unparseable_transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    turns = [{"role": roles[speaker], "content": content.strip()} for speaker, content in zip(parts[1::2], parts[2::2])]
    if any(not t["content"] for t in turns[:-1]):
        raise Drop("empty_turn")
    if not turns[-1]["content"]:
        raise Drop("empty_response")
    return turns


def hh_rlhf(row: dict) -> dict:
    """Anthropic HH-RLHF: two full `\\n\\nHuman: ... \\n\\nAssistant: ...` transcripts per row."""
    chosen, rejected = _field(row, "chosen"), _field(row, "rejected")
    if not isinstance(chosen, str) or not isinstance(rejected, str):
        raise Drop("bad_transcript")
    pair = _split_shared_prompt(_parse_hh(chosen), _parse_hh(rejected))
    if pair["chosen"] == pair["rejected"]:
        raise Drop("identical_chosen_rejected")
    return pair


def hh_rlhf_chosen(row: dict) -> dict:
    """HH-RLHF's chosen transcript as an SFT pair: the earlier turns, and the final assistant turn."""
    chosen = _field(row, "chosen")
    if not isinstance(chosen, str):
        raise Drop("bad_transcript")
    return messages_last_turn({"messages": _parse_hh(chosen)})


def ranked(row: dict) -> list[dict | Drop]:
    """A prompt and K responses, best first -> all K(K-1)/2 (chosen, rejected) pairs.

    InstructGPT trains on every pair of a ranking together: the loader tags the pairs of one row
    with a `group` (the row index), and the reward stage keeps a group's pairs in one batch.
    """
    prompt = _text_or_messages(_field(row, "prompt"), "prompt")
    listed = _field(row, "responses")
    if not isinstance(listed, list) or len(listed) < 2:
        raise Drop("fewer_than_2_responses")
    responses = []
    for response in listed:
        if not response or isinstance(response, str) and not response.strip():
            raise Drop("empty_response")
        responses.append(_text_or_messages(response, "responses"))
    pairs: list[dict | Drop] = []
    for i, better in enumerate(responses):
        for worse in responses[i + 1 :]:
            if better == worse:
                pairs.append(Drop("identical_chosen_rejected"))
            else:
                pairs.append({"prompt": prompt, "chosen": better, "rejected": worse})
    return pairs


# raw format -> (converter, canonical format)
CONVERTERS: dict[str, tuple[Callable[[dict], dict], str]] = {
    "text": (text, "language_modeling"),
    "messages": (messages, "conversational"),
    "prompt_completion": (prompt_completion, "prompt_completion"),
    "messages_last_turn": (messages_last_turn, "prompt_completion"),
    "preference": (preference, "preference"),
    "prompt": (prompt_only, "prompt_only"),
    "hh_rlhf": (hh_rlhf, "preference"),
    "hh_rlhf_chosen": (hh_rlhf_chosen, "prompt_completion"),
    "ranked": (ranked, "preference"),
}
