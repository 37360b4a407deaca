"""The one pooling: a scorer's value at the last real token, on left and right padding and with pad == EOS."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from pipeline.scoring import last_real_token, score_sequences, token_scores

EOS = 2


@pytest.fixture(scope="module")
def scorer():
    """A tiny random reward model whose pad token is its EOS token, as with SmolLM2's tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_labels=1,
        pad_token_id=EOS,
        eos_token_id=EOS,
    )
    return LlamaForSequenceClassification(config).eval()


def alone(scorer, tokens: list[int]) -> float:
    """The head at the last token of the unpadded sequence."""
    with torch.no_grad():
        ids = torch.tensor([tokens])
        return token_scores(scorer, ids, torch.ones_like(ids))[0, -1].item()


def test_the_last_real_token_is_where_the_mask_ends_on_either_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert last_real_token(mask).tolist() == [2, 4, 4, 2]


def test_a_right_padded_sequence_ending_with_eos_is_scored_at_its_eos(scorer):
    # Padding with the EOS token: transformers' own pooling reads the last token that is not the pad
    # token, the 6 before the EOS; ours reads the EOS itself
    ids = torch.tensor([[5, 6, EOS, EOS, EOS], [7, 8, 9, 10, EOS]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        scores = score_sequences(scorer, ids, mask)
        theirs = scorer(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert scores[0].item() == pytest.approx(alone(scorer, [5, 6, EOS]), abs=1e-5)
    assert scores[1].item() == pytest.approx(alone(scorer, [7, 8, 9, 10, EOS]), abs=1e-5)
    assert theirs[0].item() == pytest.approx(alone(scorer, [5, 6]), abs=1e-5)
    assert theirs[0].item() != pytest.approx(scores[0].item(), abs=1e-3)


def test_a_left_padded_sequence_scores_as_if_unpadded(scorer):
    ids = torch.tensor([[EOS, EOS, 5, 6, EOS], [11, 12, 13, 14, 15]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        scores = score_sequences(scorer, ids, mask)
        per_token = token_scores(scorer, ids, mask)
    assert scores[0].item() == pytest.approx(alone(scorer, [5, 6, EOS]), abs=1e-5)
    assert scores[1].item() == pytest.approx(alone(scorer, [11, 12, 13, 14, 15]), abs=1e-5)
    assert per_token.shape == (2, 5) and per_token.dtype == torch.float32
    assert per_token[0, 3].item() == pytest.approx(alone(scorer, [5, 6]), abs=1e-5)


def test_a_model_without_a_score_head_is_refused():
    with pytest.raises(ValueError, match="no `score` head"):
        token_scores(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2))
