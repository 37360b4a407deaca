"""Reading a model along a response: a scorer's value at every token and at a sequence's last real token (the one
pooling every stage uses), a policy's log-probs and entropies, and the mask of a response's tokens.

A scorer is a one-label `AutoModelForSequenceClassification`: the reward model, PPO's value model.
transformers pools its head at the last token that is not the pad token, which misses the EOS token
when the pad token is the EOS token (as in many real tokenizers). Here the head's output at every
position is read through a hook on the head, inside the model's own forward pass (so DDP, PEFT and
mixed precision see an ordinary call), and a sequence's score is read where its attention mask ends.
"""

from __future__ import annotations

import torch


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count real tokens only: a left-padded sequence sees the positions of an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def query_response(
    queries: torch.Tensor, query_mask: torch.Tensor, responses: torch.Tensor, response_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of `[left padding | query | response | right padding]`."""
    return torch.cat([queries, responses], dim=1), torch.cat([query_mask, response_mask.to(query_mask.dtype)], dim=1)


def last_real_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """The index of each row's last token with attention mask 1, whatever the padding side."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


def _score_head(model: torch.nn.Module) -> torch.nn.Module:
    # The outermost module named `score` (PEFT's wrapper of the head, when there is one)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "score":
            return module
    raise ValueError(f"{type(model).__name__} has no `score` head: a scorer is a sequence classifier")


def trained_score_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The head an optimiser trains: the scorer's own, or with a PEFT adapter the adapter's copy of it."""
    head = _score_head(model)
    copies = getattr(head, "modules_to_save", None)  # PEFT's ModulesToSaveWrapper
    return head if copies is None else copies[head.active_adapters[0]]


def token_scores(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scorer's head at every position, (batch, length) in fp32: the value of each state."""
    captured: list[torch.Tensor] = []
    hook = _score_head(model).register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
            use_cache=False,
        )
    finally:
        hook.remove()
    return captured[-1].squeeze(-1).float()


def score_sequences(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each sequence's score, (batch,): the head at its last real token (the EOS, when it ends with one)."""
    scores = token_scores(model, input_ids, attention_mask)
    return scores[torch.arange(len(scores), device=scores.device), last_real_token(attention_mask)]


def response_values(
    model: torch.nn.Module,
    queries: torch.Tensor,
    query_mask: torch.Tensor,
    responses: torch.Tensor,
    response_mask: torch.Tensor,
) -> torch.Tensor:
    """V(state before each response token): the value head at the token just before it."""
    scores = token_scores(model, *query_response(queries, query_mask, responses, response_mask))
    return scores[:, queries.shape[1] - 1 : -1]


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under each position's logits (without a second vocabulary-sized tensor of log-probs)."""
    logits = logits.float()
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each position's categorical distribution."""
    logits = logits.float()
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def response_mask(responses: torch.Tensor, stop_token_id: int | None) -> torch.Tensor:
    """1 up to and including the first stop token of each response, 0 after it."""
    if stop_token_id is None:
        return torch.ones_like(responses, dtype=torch.float)
    is_stop = (responses == stop_token_id).long()
    stops_before = is_stop.cumsum(1) - is_stop
    return (stops_before == 0).float()
