"""The PPO policy against the SFT policy it started from: the evaluator's answers, gold, RM scores, KL, ptx loss."""

from __future__ import annotations

from statistics import mean

import torch

from pipeline.distributed import gather_shards, shard
from pipeline.evaluation import Answers, answer, rule_baseline, win_rate
from pipeline.ppo.trainer import PPOTrainer, lm_batch
from pipeline.sampling import plain, sampling_generator
from pipeline.sandbox.evaluation import score_responses, summarize


def _answers(trainer: PPOTrainer, conversations: list[list[dict]], batch_size: int) -> dict[str, Answers]:
    """Greedy answers of the policy (with the sampled KL to SFT) and of the SFT reference, with RM scores.

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
        "reward_model": trainer.reward(),
        "synced": trainer.sharded,
        "progress": accelerator.is_main_process,
    }
    generator = sampling_generator(accelerator.device, args.seed + accelerator.process_index)
    ppo = answer(
        plain(trainer.policy),
        reference=trainer.reference(),
        temperature=args.temperature,
        generator=generator,
        description="evaluating ppo",
        **common,
    )
    sft = answer(trainer.reference(), description="evaluating sft", **common)
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
    for chunk in mine:
        batch = {k: v.to(device) for k, v in lm_batch(tokenizer, chunk, trainer.args.ptx_max_length).items()}
        losses["ppo"].append(policy(**batch).loss.item())
        reference, disabled = trainer.reference()
        with disabled():
            losses["sft"].append(reference(**batch).loss.item())
    return mean(gather_shards(losses["ppo"], real)), mean(gather_shards(losses["sft"], real))


def compare_to_sft(trainer: PPOTrainer, conversations: list[list[dict]], sandbox: bool, batch_size: int = 100) -> dict:
    """metrics.json's comparison of the trained policy with the SFT policy on held-out prompts."""
    out = _answers(trainer, conversations, batch_size)
    metrics = {
        "eval_prompts": len(conversations),
        "rm_score_mean": mean(out["ppo"].rm),
        "rm_score_mean_sft": mean(out["sft"].rm),
        "rm_win_rate_vs_sft": win_rate(out["ppo"].rm, out["sft"].rm),
        "kl_to_sft": mean(out["ppo"].kl),
    }
    if not sandbox:
        return metrics
    prompts = [c[-1]["content"] for c in conversations]
    ppo = score_responses(prompts, out["ppo"].texts, out["ppo"].finished)
    sft = score_responses(prompts, out["sft"].texts, out["sft"].finished)
    rule = rule_baseline(prompts, out["sft"].texts, out["sft"].finished)
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
