"""Reward-model pieces TRL lacks: batches that keep a ranking's pairs together, scoring, rank statistics."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import pad_across_processes
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput
from trl import ModelConfig, RewardTrainer

from pipeline.data.fitting import keep_last_turns, templated_length
from pipeline.models import TOKENIZER_FILES, load_tokenizer
from pipeline.outputs import read_metrics, read_recipe_file
from pipeline.sampling import Called
from pipeline.scoring import score_sequences


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches of whole groups (all pairs of one ranked list), at most `batch_size` pairs unless one group is larger.

    Groups are packed into batches once (first fit, largest first), so the number of batches is fixed;
    the order of the batches is shuffled on every pass, seeded by the epoch (`set_epoch`, as the Trainer
    calls it), so a run resumed in any epoch draws that epoch's order.
    """

    def __init__(self, groups: list[int], batch_size: int, seed: int) -> None:
        members: dict[int, list[int]] = defaultdict(list)
        for index, group in enumerate(groups):
            members[group].append(index)
        self.batches: list[list[int]] = []
        for group in sorted(members.values(), key=len, reverse=True):
            home = next((b for b in self.batches if len(b) + len(group) <= batch_size), None)
            if home is None:
                self.batches.append(list(group))
            else:
                home.extend(group)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        # A pass without `set_epoch` before it (a plain loop over the sampler) still draws a new order
        self.epoch += 1
        for i in torch.randperm(len(self.batches), generator=generator).tolist():
            yield self.batches[i]

    def __len__(self) -> int:
        return len(self.batches)


class _OncePerSequence(torch.nn.Module):
    """Scores each distinct row of the batch once (`score_sequences`) and hands every row its score.

    The pairs of a K-way ranking hold each of its K responses K - 1 times; InstructGPT scores each
    completion once, so a K = 4 ranking takes 4 forward passes instead of 12. Gradients are the same.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> SequenceClassifierOutput:
        rows, inverse = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
        width = input_ids.shape[1]
        scores = score_sequences(self.model, rows[:, :width], rows[:, width:])
        return SequenceClassifierOutput(logits=scores[inverse].unsqueeze(-1))


def _ragged(gather: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`gather` that also takes tensors whose first dimension differs across ranks (padded, then cut back)."""

    def gather_ragged(data: Any) -> Any:
        if not isinstance(data, torch.Tensor) or data.dim() == 0:
            return gather(data)
        sizes = gather(torch.tensor([data.shape[0]], device=data.device)).tolist()
        padded = pad_across_processes(data, dim=0)
        parts = gather(padded).split(padded.shape[0])
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    return gather_ragged


class GroupedRewardTrainer(RewardTrainer):
    """trl.RewardTrainer whose training batches keep the pairs of one ranking together (InstructGPT).

    Datasets without a `group` column (plain pairs) train exactly as with RewardTrainer.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if getattr(self.model, "is_loaded_in_4bit", False) or getattr(self.model, "is_loaded_in_8bit", False):
            # RewardTrainer casts QLoRA's trainable weights to bf16; the score head must take the hidden
            # states' dtype, or its matmul fails when the model computes in fp32
            hidden_dtype = self.model.get_input_embeddings().weight.dtype
            for name, param in self.model.named_parameters():
                if param.requires_grad and ".score." in name:
                    param.data = param.data.to(hidden_dtype)
        if self.accelerator.num_processes > 1:
            # RewardTrainer gathers every rank's rewards each step; grouped batches differ in size across ranks
            self.accelerator.gather = _ragged(self.accelerator.gather)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return super().compute_loss(_OncePerSequence(model), inputs, return_outputs, num_items_in_batch)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> Any:
        # The Trainer's own `set_epoch` does not reach a batch sampler wrapped twice (a resumed run's skipped
        # batches of a multi-process loader), so the grouped sampler hears the epoch here, always
        sampler = getattr(self, "_grouped_sampler", None)
        if sampler is not None:
            sampler.set_epoch(kwargs["epoch"])
        return super()._run_epoch(*args, **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        if "group" not in self.train_dataset.column_names:
            return super().get_train_dataloader()
        groups = self.train_dataset["group"]
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        sampler = self._grouped_sampler = GroupedBatchSampler(groups, self._train_batch_size, self.args.seed)
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)


@dataclass(frozen=True)
class RewardReader:
    """How a reward model reads a response: the tokenizer (and chat template) it trained with, and its
    `max_length`, beyond which its training data lost a prompt's earliest turns or the row (data/fitting.py)."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int | None = None


def load_reward_reader(
    path: str, policy_tokenizer: PreTrainedTokenizerBase, trust_remote_code: bool = False
) -> RewardReader:
    """The reader of the reward model in `path`: its own tokenizer and recipe's `max_length` when it has them
    (a folder saved without a tokenizer reads the policy's tokens; a Hub RM, no length)."""
    folder = Path(path)
    tokenizer = policy_tokenizer
    if not folder.is_dir() or any((folder / name).is_file() for name in TOKENIZER_FILES):
        tokenizer = load_tokenizer(ModelConfig(model_name_or_path=path), trust_remote_code)
    return RewardReader(tokenizer, read_recipe_file(folder).get("max_length"))


def reward_statistics(path: str) -> tuple[float, float] | None:
    """The mean and std of the RM's scores on its training responses, from its `metrics.json`; None for a
    reward model that carries none (a Hub model)."""
    metrics = read_metrics(path)
    if not {"reward_mean", "reward_std"} <= set(metrics):
        return None
    return metrics["reward_mean"], metrics["reward_std"]


def reward_conversations(
    prompts: list[list[dict]], responses: list[str], reader: RewardReader | None = None
) -> list[list[dict]]:
    """What the reward model reads for each response: its prompt, then the response as the assistant's turn.

    The labels present every response this way, finished or not (an unfinished answer is closed by the
    chat template), so PPO's rollouts, the evaluation and RLOO/GRPO read the RM where it was trained;
    a missing EOS costs `missing_eos_penalty` on top. Longer than the reader's `max_length`, a prompt
    loses its earliest turns as the RM's training rows did (`keep_last_turns`; down to its last user
    turn when even that is too long).
    """
    conversations = []
    for prompt, response in zip(prompts, responses, strict=True):
        answer = [{"role": "assistant", "content": response}]
        too_long = reader is not None and reader.max_length is not None
        if too_long and templated_length(reader.tokenizer, prompt + answer) > reader.max_length:
            last_user = max(i for i, turn in enumerate(prompt) if turn["role"] == "user")
            prompt = keep_last_turns(prompt, [answer], reader.tokenizer, reader.max_length) or prompt[last_user:]
        conversations.append(prompt + answer)
    return conversations


def reward_ids(tokenizer: PreTrainedTokenizerBase, sequence: list[dict] | str) -> list[int]:
    """The token ids the reward model reads for one conversation or text: those `trl.RewardTrainer` trains on.

    A conversation goes through the chat template whole (ChatML's turn ends `<|im_end|>` then a newline, and
    the head is read at that newline); a plain text gets the EOS token appended when it lacks one, as TRL does.
    """
    if isinstance(sequence, str):
        text = sequence if sequence.endswith(tokenizer.eos_token) else sequence + tokenizer.eos_token
        return tokenizer(text)["input_ids"]
    return list(tokenizer.apply_chat_template(sequence, tokenize=True, return_dict=True)["input_ids"])


def reward_batch(
    tokenizer: PreTrainedTokenizerBase, sequences: list[list[dict] | str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (input ids, attention mask) of `reward_ids`."""
    rows = [reward_ids(tokenizer, s) for s in sequences]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


def response_rewards(
    reward_model: Called,
    reader: RewardReader,
    prompts: list[list[dict]],
    responses: list[str],
    batch_size: int = 64,
) -> list[float]:
    """The reward model's score of each response to its prompt, read on `reward_conversations`."""
    model, context = reward_model
    with context():
        return reward_scores(model, reader.tokenizer, reward_conversations(prompts, responses, reader), batch_size)


@torch.no_grad()
def reward_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[list[dict] | str],
    batch_size: int = 64,
) -> list[float]:
    """The scalar reward of each conversation or text (`reward_ids`), read at its last token."""
    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        for start in range(0, len(conversations), batch_size):
            ids, mask = reward_batch(tokenizer, conversations[start : start + batch_size])
            scores.extend(score_sequences(model, ids.to(model.device), mask.to(model.device)).tolist())
    finally:
        model.train(was_training)
    return scores


def _ranks(values: list[float]) -> list[float]:
    """Ranks from 1, ties sharing their average rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (Pearson on average ranks); 0.0 when either side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of the same length, at least 2")
    rx, ry = torch.tensor(_ranks(x)), torch.tensor(_ranks(y))
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt()
    return float((dx * dy).sum() / denominator) if denominator > 0 else 0.0
