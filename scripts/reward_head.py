"""A reward model with an untrained score head on a policy's weights: for runs that measure speed and memory only.

The PPO stage refuses a causal LM as its reward model (its score head would be random without anyone
knowing); `make bench` and `make gpu-check` time PPO on such a model knowingly, so they write one.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AutoModelForSequenceClassification, AutoTokenizer


def untrained_reward_model(policy: str | Path, folder: Path) -> Path:
    """`folder` holding `policy`'s weights under a new (random) score head, and its tokenizer; kept once written."""
    if not (folder / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(policy)
        model = AutoModelForSequenceClassification.from_pretrained(
            policy, num_labels=1, pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder
