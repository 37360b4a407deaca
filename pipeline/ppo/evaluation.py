"""The PPO policy and the SFT policy it started from, side by side on held-out prompts: answers and ptx losses.

The stage compares them with the eval stage's `evaluation.compare`.
"""

from __future__ import annotations

from statistics import mean

import torch

from pipeline.answers import Answers, answer
from pipeline.distributed import gather_shards, root_gathered, shard
from pipeline.ppo.trainer import PPOTrainer, lm_batch
from pipeline.sampling import plain, sampling_generator


def policy_and_sft_answers(
    trainer: PPOTrainer, conversations: list[list[dict]], batch_size: int, num_samples: int
) -> dict[str, Answers]:
    """Greedy and sampled answers of the policy (with their KL to SFT) and of the SFT reference, with RM scores.

    Each rank takes its share of the prompts; every rank gets all the results.
    """
    args, tokenizer, accelerator = trainer.args, trainer.tokenizer, trainer.accelerator
    trainer.model.eval()
    mine, real = shard(conversations)
    common = {
        "tokenizer": tokenizer,
        "conversations": mine,
        "max_new_tokens": args.response_length,
        "batch_size": batch_size,
        "stop_token_id": trainer.stop_token_id,
        "num_samples": num_samples,
        "temperature": args.temperature,
        "reward_model": trainer.reward(),
        "reward_reader": trainer.reward_reader,
        "synced": trainer.synced,
        "progress": accelerator.is_main_process,
    }
    generator = sampling_generator(accelerator.device, args.seed + accelerator.process_index)
    with root_gathered(trainer.model):
        ppo = answer(
            plain(trainer.policy),
            reference=trainer.reference(),
            generator=generator,
            description="evaluating ppo",
            **common,
        )
        sft = answer(trainer.reference(), generator=generator, description="evaluating sft", **common)
    sft.kl = [0.0] * len(sft.texts)
    return {
        name: Answers(**{f: gather_shards(getattr(a, f), real) for f in Answers.__dataclass_fields__})
        for name, a in (("ppo", ppo), ("sft", sft))
    }


@torch.no_grad()
def ptx_losses(trainer: PPOTrainer, texts: list[str], batch_size: int = 32) -> tuple[float, float]:
    """Mean language-modelling loss over batches of pretraining text, of the policy and of the SFT reference.

    The batches are the same whatever the number of processes; each rank takes its share of them.
    """
    tokenizer, device = trainer.tokenizer, trainer.accelerator.device
    policy = trainer.policy
    mine, real = shard([texts[start : start + batch_size] for start in range(0, len(texts), batch_size)])
    losses: dict[str, list[float]] = {"ppo": [], "sft": []}
    with root_gathered(trainer.model):
        for chunk in mine:
            batch = {k: v.to(device) for k, v in lm_batch(tokenizer, chunk, trainer.args.ptx_max_length).items()}
            losses["ppo"].append(policy(**batch).loss.item())
            reference, disabled = trainer.reference()
            with disabled():
                losses["sft"].append(reference(**batch).loss.item())
    return mean(gather_shards(losses["ppo"], real)), mean(gather_shards(losses["sft"], real))
