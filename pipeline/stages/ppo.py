"""PPO and PPO-ptx: the SFT policy optimised against the reward model, with a KL penalty to itself.

InstructGPT's third step. The policy starts from the SFT model and the value model from the reward
model; the reference policy and the reward model stay frozen (`ppo.models`). On sandbox prompts the
gold judge is logged beside the reward model's score, and prompts are balanced over task families.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from transformers import set_seed
from trl import ModelConfig

from pipeline import outputs
from pipeline.configs import PPOConfig, ScriptArguments
from pipeline.data import load_card
from pipeline.distributed import engine, num_machines, rank_divergence, require_engine
from pipeline.errors import PipelineError
from pipeline.evaluation import compare
from pipeline.inputs import recipe_paths
from pipeline.ppo import checkpoint
from pipeline.ppo.evaluation import policy_and_sft_answers, ptx_losses
from pipeline.ppo.models import load_models
from pipeline.ppo.trainer import PPOTrainer
from pipeline.reward import reward_statistics
from pipeline.sandbox.evaluation import balanced_indices, family, gold_rewards, is_sandbox
from pipeline.sandbox.tasks import test_prompts
from pipeline.stages.common import check_publishable, require_held_out
from pipeline.vllm_engine import VLLMEngine, check_engine, open_engine

logger = logging.getLogger(__name__)


def run(script_args: ScriptArguments, model_args: ModelConfig, args: PPOConfig, recipe: dict) -> dict:
    # Output folder: work happens in <output_dir>.partial; a rerun of the same recipe resumes its last checkpoint
    check_engine(args.generation_engine)
    work, resume = outputs.start(args.output_dir, "ppo", recipe, recipe_paths(recipe))
    accelerator = _accelerator(args, work, recipe)
    set_seed(args.seed)

    # Data: the prompts to roll out (sandbox ones balanced over families), and for PPO-ptx the pretraining text
    prompts, sandbox = _prompts(script_args, args)
    ptx_texts = _ptx_texts(args) if args.ptx_coef > 0 else None

    # Models: policy and reference from SFT, value model and reward model from the RM
    models = load_models(args, model_args)
    # None where the RM carries none (a Hub model): PPO takes them from its first rollout
    normalized = args.normalize_reward and not args.gold_reward_scale
    reward_stats = reward_statistics(args.reward_model_path) if normalized else None

    # Train: rollouts (sampled by the recipe's engine), scores, clipped updates; checkpoints every save_steps
    trainer = PPOTrainer(
        args,
        accelerator,
        models.tokenizer,
        models.policy,
        models.value_model,
        prompts,
        work,
        ref_policy=models.reference,
        reward_model=models.reward_model,
        reward_stats=reward_stats,
        ptx_texts=ptx_texts,
        gold_fn=gold_rewards if sandbox else None,
        reward_reader=models.reward_reader,
        prompt_groups=[family(p) for p in prompts] if sandbox else None,
    )
    trainer.vllm = _vllm_engine(args, accelerator, trainer.policy, trainer.query_ids)
    if resume:
        trainer.resume()
    started, first_step = time.monotonic(), trainer.step
    with trainer.vllm or contextlib.nullcontext():
        trainer.train()
    metrics = _training_metrics(trainer, time.monotonic() - started, trainer.step - first_step, sandbox)
    if trainer.reward_stats is not None:
        where = "the reward model's metrics" if reward_stats else "the first rollout"
        metrics["reward_stats"] = {"mean": trainer.reward_stats[0], "std": trainer.reward_stats[1], "from": where}

    # Evaluate against the SFT policy on held-out prompts (every rank its share, in training's precision), save
    held_out = _held_out(script_args, sandbox)
    with accelerator.autocast():
        answers = policy_and_sft_answers(
            trainer, held_out, script_args.sandbox_eval_batch_size, script_args.sandbox_eval_samples
        )
        metrics["eval"], samples = compare(held_out, answers, "sft", sandbox, args.temperature, args.seed)
        if args.ptx_dataset_card:
            ptx_eval, _ = load_card(args.ptx_dataset_card, args.ptx_eval_split, max_rows=200)
            metrics["ptx_loss"], metrics["ptx_loss_sft"] = ptx_losses(trainer, ptx_eval["text"])
    check_publishable(trainer.policy, trainer.step, work)
    checkpoint.save_policy(accelerator, trainer.model, trainer.policy, models.tokenizer, work)
    if accelerator.is_main_process:
        outputs.write_jsonl(work / outputs.PPO_SAMPLES_FILE, samples)
        outputs.write_metrics(work, metrics)
        outputs.finish(work, args.output_dir)
        logger.info("wrote %s: %s", args.output_dir, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics


def _vllm_engine(
    args: PPOConfig,
    accelerator: Accelerator,
    policy: torch.nn.Module,
    query_ids: list[list[int]],
) -> VLLMEngine | None:
    """The vLLM engine of this process for the trainer's queries, if the recipe asks for one (every process
    samples its own rollouts)."""
    if args.generation_engine != "vllm":
        return None
    if engine(accelerator).startswith(("DEEPSPEED ZeRO-3", "FSDP")):
        raise PipelineError(
            f"generation_engine vllm needs the policy's whole weights in every process, and {engine(accelerator)} "
            "shards them: use DDP or ZeRO-2, or generation_engine torch"
        )
    return open_engine(
        "vllm",
        policy,
        query_ids,
        args.response_length,
        args.local_rollout_forward_batch_size,
        args.seed + accelerator.process_index,
        # The precision rollouts are scored in: the trainer's passes run under its autocast
        dtype=torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32,
    )


def _accelerator(args: PPOConfig, work: Path, recipe: dict) -> Accelerator:
    accelerator = Accelerator(
        cpu=args.use_cpu,
        mixed_precision=args.mixed_precision,  # the recipe's (cli: distributed.use_recipe_precision)
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        step_scheduler_with_optimizer=False,  # PPOTrainer steps the schedule once per optimiser step
        log_with=args.report_to or None,
        project_dir=str(work),
    )
    require_engine(accelerator)
    accelerator.init_trackers(args.run_name or "ppo", config=outputs.clean_recipe("ppo", recipe))  # no secrets
    return accelerator


def _prompts(script_args: ScriptArguments, args: PPOConfig) -> tuple[list[list[dict]], bool]:
    """The training prompts, and whether they are the sandbox's."""
    rows, _ = load_card(
        script_args.dataset_card, script_args.dataset_train_split, script_args.data_files, script_args.max_train_samples
    )
    prompts = [row["prompt"] for row in rows]
    sandbox = is_sandbox(prompts)
    held_out_split = not (sandbox and script_args.sandbox_eval_prompts)  # else the sandbox's test prompts
    if script_args.data_files and script_args.dataset_test_split and held_out_split:
        require_held_out(
            script_args.dataset_card,
            script_args.data_files,
            script_args.dataset_train_split,
            script_args.dataset_test_split,
        )
    if args.gold_reward_scale and not sandbox:
        raise PipelineError(f"gold_reward_scale needs sandbox prompts, and {script_args.dataset_card} has others")
    if sandbox and script_args.balance_families:
        prompts = [prompts[i] for i in balanced_indices(prompts)]
    return prompts, sandbox


def _ptx_texts(args: PPOConfig) -> list[str]:
    rows, _ = load_card(args.ptx_dataset_card, args.ptx_dataset_split)
    if len(rows) < args.ptx_batch_size:
        raise PipelineError(
            f"{args.ptx_dataset_card} [{args.ptx_dataset_split}] has {len(rows)} texts, "
            f"fewer than ptx_batch_size ({args.ptx_batch_size})"
        )
    return list(rows["text"])


def _held_out(script_args: ScriptArguments, sandbox: bool) -> list[list[dict]]:
    """The prompts PPO's end-of-run comparison answers: the sandbox's test prompts, or the card's test split."""
    if sandbox and script_args.sandbox_eval_prompts:
        return [[{"role": "user", "content": p}] for p in test_prompts(script_args.sandbox_eval_prompts)]
    rows, _ = load_card(
        script_args.dataset_card, script_args.dataset_test_split, script_args.data_files, script_args.max_eval_samples
    )
    return [row["prompt"] for row in rows]


def _training_metrics(trainer: PPOTrainer, seconds: float, steps_run: int, sandbox: bool) -> dict:
    accelerator = trainer.accelerator
    metrics = {
        "train_steps": trainer.step,
        "episodes": trainer.step * trainer.args.batch_size,
        "seconds_per_step": seconds / steps_run if steps_run else None,
        "train_runtime": seconds,
        "final_kl_coef": trainer.kl_controller.value,
        "num_processes": accelerator.num_processes,
        "num_machines": num_machines(),
        "engine": engine(accelerator),
    }
    if sandbox:
        metrics["trained_family_mix"] = trainer.trained_groups()
    divergence = rank_divergence(accelerator, accelerator.unwrap_model(trainer.model))
    if divergence is not None:
        metrics["rank_divergence"] = divergence
    return metrics
