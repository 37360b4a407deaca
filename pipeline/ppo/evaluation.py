"""The PPO policy against the SFT policy it started from: greedy responses, RM and gold scores, KL, ptx loss."""

from __future__ import annotations

import contextlib
from statistics import mean

import torch
from tqdm.auto import tqdm

from pipeline.distributed import gather_shards, shard
from pipeline.ppo.rollout import (
    decode,
    encode_prompts,
    left_pad,
    sample,
    sampled_kl,
    sampling_generator,
    sequence_rewards,
)
from pipeline.ppo.trainer import PPOTrainer, lm_batch
from pipeline.sandbox.evaluation import score_responses, summarize
from pipeline.sandbox.judge import strip_filler


def win_rate(a: list[float], b: list[float]) -> float:
    """How often `a` beats `b`, row by row, ties counting half."""
    return mean(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True))


@torch.no_grad()
def _responses(trainer: PPOTrainer, conversations: list[list[dict]], batch_size: int) -> dict[str, list]:
    """Greedy responses of the policy and of the SFT reference, their RM scores, and the sampled KL to SFT.

    Each rank takes its share of the prompts; every rank gets all the results.
    """
    args, tokenizer, accelerator = trainer.args, trainer.tokenizer, trainer.accelerator
    pad, stop, synced = tokenizer.pad_token_id, trainer.stop_token_id, trainer.sharded
    policy = trainer.policy
    trainer.model.eval()
    generator = sampling_generator(accelerator.device, args.seed + accelerator.process_index)
    mine, real = shard(conversations)
    out: dict[str, list] = {k: [] for k in ("ppo", "sft", "ppo_finished", "sft_finished", "rm_ppo", "rm_sft", "kl")}
    batches = range(0, len(mine), batch_size)
    for start in tqdm(batches, desc="evaluating ppo vs sft", unit="batch", disable=not accelerator.is_main_process):
        ids = encode_prompts(tokenizer, mine[start : start + batch_size])
        queries, query_mask = (t.to(accelerator.device) for t in left_pad(ids, pad))
        reference, disabled = trainer.reference()
        for name, model, context in (("ppo", policy, contextlib.nullcontext()), ("sft", reference, disabled)):
            with context:
                greedy = sample(model, queries, query_mask, args.response_length, 0.0, stop, pad, synced=synced)
            reward_model, reward_context = trainer.reward()
            with reward_context:
                rewards = sequence_rewards(reward_model, queries, query_mask, greedy.responses, greedy.mask)
            out[f"rm_{name}"] += rewards.tolist()
            texts, finished = decode(tokenizer, greedy.responses, greedy.mask, stop)
            out[name] += texts
            out[f"{name}_finished"] += finished
        # KL(PPO || SFT) on responses sampled as in training
        reference, disabled = trainer.reference()
        out["kl"] += sampled_kl(
            policy,
            reference,
            queries,
            query_mask,
            args.response_length,
            args.temperature,
            stop,
            pad,
            generator,
            disabled,
            synced,
        )
    return {name: gather_shards(values, real) for name, values in out.items()}


@torch.no_grad()
def ptx_losses(trainer: PPOTrainer, texts: list[str], batch_size: int = 32) -> tuple[float, float]:
    """Mean language-modelling loss over batches of pretraining text, of the policy and of the SFT reference.

    The batches are the same whatever the number of processes; each rank takes its share of them.
    """
    tokenizer, device = trainer.tokenizer, trainer.accelerator.device
    policy = trainer.policy
    mine, real = shard([texts[start : start + batch_size] for start in range(0, len(texts), batch_size)])
    losses: dict[str, list[float]] = {"ppo": [], "sft": []}
    for chunk in mine:
        batch = {k: v.to(device) for k, v in lm_batch(tokenizer, chunk, trainer.args.ptx_max_length).items()}
        losses["ppo"].append(policy(**batch).loss.item())
        reference, disabled = trainer.reference()
        with disabled:
            losses["sft"].append(reference(**batch).loss.item())
    return mean(gather_shards(losses["ppo"], real)), mean(gather_shards(losses["sft"], real))


def compare_to_sft(trainer: PPOTrainer, conversations: list[list[dict]], sandbox: bool, batch_size: int = 100) -> dict:
    """metrics.json's comparison of the trained policy with the SFT policy on held-out prompts."""
    out = _responses(trainer, conversations, batch_size)
    metrics = {
        "eval_prompts": len(conversations),
        "rm_score_mean": mean(out["rm_ppo"]),
        "rm_score_mean_sft": mean(out["rm_sft"]),
        "rm_win_rate_vs_sft": win_rate(out["rm_ppo"], out["rm_sft"]),
        "kl_to_sft": mean(out["kl"]),
    }
    if not sandbox:
        return metrics
    prompts = [c[-1]["content"] for c in conversations]
    ppo = score_responses(prompts, out["ppo"], out["ppo_finished"])
    sft = score_responses(prompts, out["sft"], out["sft_finished"])
    rule = score_responses(prompts, [strip_filler(r) for r in out["sft"]], out["sft_finished"])
    families = sorted({row["family"] for row in ppo})

    def wins(a: list[dict], b: list[dict], family: str | None = None) -> float:
        pairs = [(x["gold"], y["gold"]) for x, y in zip(a, b, strict=True) if family in (None, x["family"])]
        return win_rate([p[0] for p in pairs], [p[1] for p in pairs])

    for suffix, rows in (("", ppo), ("_sft", sft), ("_rule_baseline", rule)):
        summary = summarize(rows)
        metrics.update(
            {
                f"gold_mean{suffix}": summary["gold_mean"],
                f"gold_correctness{suffix}": summary["gold_correctness"],
                f"gold_style{suffix}": summary["gold_style"],
                f"gold_by_family{suffix}": summary["gold_by_family"],
                f"gold_correctness_by_family{suffix}": summary["gold_correctness_by_family"],
            }
        )
    metrics["gold_win_rate_vs_sft"] = wins(ppo, sft)
    metrics["win_rate_vs_rule_baseline"] = wins(ppo, rule)
    metrics["gold_win_rate_vs_sft_by_family"] = {f: wins(ppo, sft, f) for f in families}
    metrics["win_rate_vs_rule_baseline_by_family"] = {f: wins(ppo, rule, f) for f in families}
    metrics["samples"] = [
        {"prompt": p, "sft": s["response"], "ppo": q["response"], "gold_sft": s["gold"], "gold_ppo": q["gold"]}
        for p, s, q in zip(prompts, sft, ppo, strict=True)
    ]
    return metrics
