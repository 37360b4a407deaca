"""The sampler and the scorer passes on a tiny random Llama: sampled log-probs, greedy decoding, scores."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from pipeline.sampling import left_pad, response_logprobs, sample
from pipeline.scoring import query_response, response_mask, response_values, score_sequences, token_scores

PAD, EOS = 0, 2
CONFIG = dict(
    vocab_size=40,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    pad_token_id=PAD,
    eos_token_id=EOS,
    bos_token_id=1,
)


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()


@pytest.fixture(scope="module")
def scorer():
    torch.manual_seed(1)
    return LlamaForSequenceClassification(LlamaConfig(**CONFIG, num_labels=1)).eval()


def queries():
    return left_pad([[1, 5, 6, 7, 8], [1, 9, 10], [1, 11, 12, 13]], PAD)


def test_sampled_logprobs_equal_a_full_forward_pass(policy):
    q, qm = queries()
    out = sample(policy, q, qm, 8, 0.7, EOS, PAD, torch.Generator().manual_seed(0))
    mask = response_mask(out.responses, EOS)
    with torch.no_grad():
        logprobs, entropy = response_logprobs(policy, q, qm, out.responses.masked_fill(mask == 0, PAD), mask, 0.7)
    torch.testing.assert_close(out.logprobs * mask, logprobs * mask, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.entropy * mask, entropy * mask, atol=1e-4, rtol=1e-4)


def test_greedy_sampling_equals_generate_and_padding_does_not_matter(policy):
    q, qm = queries()
    out = sample(policy, q, qm, 6, 0.0, None, PAD)
    expected = policy.generate(
        input_ids=q, attention_mask=qm, max_new_tokens=6, do_sample=False, pad_token_id=PAD, eos_token_id=None
    )
    assert out.responses.tolist() == expected[:, q.shape[1] :].tolist()
    alone = sample(policy, torch.tensor([[1, 9, 10]]), torch.ones(1, 3, dtype=torch.long), 6, 0.0, None, PAD)
    assert alone.responses[0].tolist() == out.responses[1].tolist()


def test_sampling_stops_and_pads_after_the_stop_token(policy):
    q, qm = queries()
    greedy = sample(policy, q, qm, 6, 0.0, None, PAD).responses
    stop = int(greedy[0, 1])  # the first row's second token becomes the stop token
    out = sample(policy, q, qm, 6, 0.0, stop, PAD).responses
    assert out[0, 1] == stop and (out[0, 2:] == PAD).all()


def test_reward_is_the_classifier_score_at_the_last_real_token(scorer):
    q, qm = queries()
    responses = torch.tensor([[20, 21, EOS], [22, EOS, PAD], [23, 24, 25]])
    mask = response_mask(responses, EOS)
    with torch.no_grad():
        rewards = score_sequences(scorer, *query_response(q, qm, responses, mask))
        values = response_values(scorer, q, qm, responses, mask)
        for row in range(3):
            tokens = [t for t in q[row].tolist() if t != PAD] + responses[row][mask[row] == 1].tolist()
            alone = scorer(input_ids=torch.tensor([tokens])).logits[0, 0]
            assert rewards[row].item() == pytest.approx(alone.item(), abs=1e-4)
            per_token = token_scores(scorer, torch.tensor([tokens]), torch.ones(1, len(tokens), dtype=torch.long))
            # the value of the state before response token t is the head at the token before it
            n = int(mask[row].sum())
            torch.testing.assert_close(values[row, :n], per_token[0, -n - 1 : -1], atol=1e-4, rtol=1e-4)
