"""The sandbox tokenizer: whole tokens for the instruction words, one token per character for the world.

Learnt from sandbox text with the `tokenizers` library: the frequent words of the instructions, facts
and filler ("Reverse", "capital", "between", "Hope") become single tokens; everything else, every
sandbox word, its reversal and every number, stays byte by byte. A small model can then see the
letters it must reverse, capitalise, count or check ("starts with g and ends with f"), which a
subword vocabulary would hide inside opaque word tokens.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pipeline.sandbox.words import WORDS

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPACE = "Ġ"  # byte-level BPE's mark for a leading space

# `{% generation %}` marks the assistant's tokens, which TRL's assistant_only_loss trains on.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [pre_tokenizers.ByteLevel(add_prefix_space=True), pre_tokenizers.Digits(individual_digits=True)]
    )


def template_words(texts: Iterable[str], min_count: int) -> list[str]:
    """Pre-tokens (with their space mark) seen at least `min_count` times that are not world content.

    Content is case-sensitive: "Name" and "Sure" open instructions and filler, "name" and "sure" are
    sandbox words the model may have to spell.
    """
    content = set(WORDS) | {w[::-1] for w in WORDS}
    markup = re.compile("|".join(re.escape(t) for t in (PAD, BOS, EOS, *ROLE_TOKENS)))
    split = _pre_tokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(piece for piece, _ in split.pre_tokenize_str(markup.sub(" ", text)))
    return sorted(
        piece
        for piece, n in counts.items()
        if n >= min_count
        and piece.startswith(SPACE)
        and piece[1:].isalpha()
        and len(piece) > 2
        and piece[1:] not in content
    )


def train_tokenizer(texts: Iterable[str], min_count: int = 100) -> PreTrainedTokenizerFast:
    """Bytes plus whole template words; `ignore_merges` makes a pre-token a token only when it is in the vocab."""
    specials = [PAD, BOS, EOS, *ROLE_TOKENS]
    tokens = specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + template_words(texts, min_count)
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=[], ignore_merges=True))
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
