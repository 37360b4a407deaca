"""PPO and PPO-ptx: the SFT policy optimised against the reward model, with a KL penalty to itself.

InstructGPT's third step. The policy starts from the SFT model and the value model from the reward
model; the reference policy and the reward model stay frozen. With `use_peft` both trained models
are LoRA adapters, and the frozen ones are the same weights with the adapters disabled.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from peft import get_peft_model
from transformers import PreTrainedModel, set_seed
from trl import ModelConfig, get_peft_config

from pipeline import outputs
from pipeline.configs import PPOConfig, ScriptArguments
from pipeline.data import load_card
from pipeline.distributed import engine, rank_divergence, require_engine
from pipeline.errors import PipelineError
from pipeline.models import (
    is_adapter,
    load_policy,
    load_scorer,
    load_tokenizer,
    prepare_quantized,
    require_reward_model,
    require_same_vocabulary,
)
from pipeline.ppo.evaluation import compare_to_sft, ptx_losses
from pipeline.ppo.trainer import PPOTrainer
from pipeline.reward import load_reward_reader
from pipeline.sandbox.evaluation import balanced_indices, family, gold_rewards, is_sandbox
from pipeline.sandbox.tasks import test_prompts
from pipeline.stages.common import check_publishable, require_held_out

logger = logging.getLogger(__name__)


def _frozen(model: PreTrainedModel) -> PreTrainedModel:
    model.eval().requires_grad_(False)
    return model


def _without_dropout(model: PreTrainedModel) -> PreTrainedModel:
    """PPO's ratio must be 1 before each update: no dropout in any model, LoRA's included (Huang et al. 2024)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _reward_stats(args: PPOConfig) -> tuple[float, float] | None:
    if not args.normalize_reward:
        return None
    path = Path(args.reward_model_path, outputs.METRICS_FILE)
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    if not {"reward_mean", "reward_std"} <= set(metrics):
        raise PipelineError(
            f"normalize_reward needs reward_mean and reward_std in {path}; or set normalize_reward: false"
        )
    return metrics["reward_mean"], metrics["reward_std"]


def run(script_args: ScriptArguments, model_args: ModelConfig, args: PPOConfig, recipe: dict) -> dict:
    if model_args.model_name_or_path:
        raise PipelineError(
            "the ppo stage reads its models from sft_model_path and reward_model_path, not model_name_or_path"
        )
    # Output folder: work happens in <output_dir>.partial; a rerun of the same recipe resumes its last checkpoint
    output_dir = args.output_dir
    work, resume = outputs.start(output_dir, "ppo", recipe)
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
    set_seed(args.seed)

    # Data: the prompts to roll out, and for PPO-ptx the pretraining text
    prompt_rows, _ = load_card(
        script_args.dataset_card, script_args.dataset_train_split, script_args.data_files, script_args.max_train_samples
    )
    prompts = [row["prompt"] for row in prompt_rows]
    sandbox = is_sandbox(prompts)
    held_out_split = not (sandbox and script_args.sandbox_eval_prompts)  # else the sandbox's test prompts
    if script_args.data_files and script_args.dataset_test_split and held_out_split:
        require_held_out(
            script_args.dataset_card,
            script_args.data_files,
            script_args.dataset_train_split,
            script_args.dataset_test_split,
        )
    if sandbox and script_args.balance_families:
        prompts = [prompts[i] for i in balanced_indices(prompts)]
    if args.gold_reward_scale and not sandbox:
        raise PipelineError(f"gold_reward_scale needs sandbox prompts, and {script_args.dataset_card} has others")
    ptx_texts = None
    if args.ptx_coef > 0:
        ptx_rows, _ = load_card(args.ptx_dataset_card, args.ptx_dataset_split)
        ptx_texts = list(ptx_rows["text"])
        if len(ptx_texts) < args.ptx_batch_size:
            raise PipelineError(
                f"{args.ptx_dataset_card} [{args.ptx_dataset_split}] has {len(ptx_texts)} texts, "
                f"fewer than ptx_batch_size ({args.ptx_batch_size})"
            )

    # Models: policy and reference from SFT, value model and reward model from the RM
    tokenizer = load_tokenizer(
        dataclasses.replace(model_args, model_name_or_path=args.sft_model_path), args.trust_remote_code
    )
    require_reward_model(args.reward_model_path, "reward_model_path")
    value_path = args.value_model_path or args.reward_model_path
    for path, what in ((args.reward_model_path, "the reward model"), (value_path, "the value model")):
        require_same_vocabulary(tokenizer, path, what, f"the policy {args.sft_model_path}", args.trust_remote_code)
    peft_config = get_peft_config(model_args)
    if peft_config is not None and is_adapter(args.sft_model_path):
        raise PipelineError(
            f"{args.sft_model_path} is a LoRA adapter: a LoRA policy needs full SFT weights to share with its "
            "reference; merge the adapter first, or train the full policy (use_peft: false)"
        )
    policy = load_policy(args.sft_model_path, model_args, args.trust_remote_code)
    policy = prepare_quantized(policy, model_args, args.activation_checkpointing)  # QLoRA: a 4-bit base
    ref_policy = None
    if peft_config is None:
        ref_policy = _frozen(load_policy(args.sft_model_path, model_args, args.trust_remote_code))
    else:
        policy = get_peft_model(policy, dataclasses.replace(peft_config, task_type="CAUSAL_LM"))
    policy = _without_dropout(policy)
    reward_model = _frozen(
        load_scorer(args.reward_model_path, model_args, tokenizer.pad_token_id, args.trust_remote_code)
    )
    shared = peft_config is not None and value_path == args.reward_model_path
    value_model = (
        reward_model if shared else load_scorer(value_path, model_args, tokenizer.pad_token_id, args.trust_remote_code)
    )
    if peft_config is not None:
        value_model = get_peft_model(value_model, dataclasses.replace(peft_config, task_type="SEQ_CLS"))
    if shared:
        reward_model = None  # the value model with its adapter disabled
    value_model = _without_dropout(value_model)

    # Train: rollouts, scores, clipped updates; checkpoints every save_steps
    trainer = PPOTrainer(
        args,
        accelerator,
        tokenizer,
        policy,
        value_model,
        prompts,
        work,
        ref_policy=ref_policy,
        reward_model=reward_model,
        reward_stats=_reward_stats(args),
        ptx_texts=ptx_texts,
        gold_fn=gold_rewards if sandbox else None,
        reward_reader=load_reward_reader(args.reward_model_path, tokenizer, args.trust_remote_code),
        prompt_groups=[family(p) for p in prompts] if sandbox else None,
    )
    logger.info(
        "%d updates of %d episodes (%d per process: %d mini-batches of %d per device x %d accumulation)",
        trainer.num_updates,
        trainer.batch_size,
        trainer.local_batch_size,
        args.num_mini_batches,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
    )
    if resume:
        trainer.resume()
    started, first_step = time.monotonic(), trainer.step
    trainer.train()
    steps_run = trainer.step - first_step
    train_seconds = time.monotonic() - started

    # Evaluate against the SFT policy on held-out prompts, then save the policy and its tokenizer
    if sandbox and script_args.sandbox_eval_prompts:
        held_out = [[{"role": "user", "content": p}] for p in test_prompts(script_args.sandbox_eval_prompts)]
    else:
        rows, _ = load_card(
            script_args.dataset_card,
            script_args.dataset_test_split,
            script_args.data_files,
            script_args.max_eval_samples,
        )
        held_out = [row["prompt"] for row in rows]
    metrics = {
        "train_steps": trainer.step,
        "episodes": trainer.step * trainer.batch_size,
        "seconds_per_step": train_seconds / steps_run if steps_run else None,
        "train_runtime": train_seconds,
        "final_kl_coef": trainer.kl_controller.value,
        "num_processes": accelerator.num_processes,
        "engine": engine(accelerator),
    }
    if sandbox:
        metrics["trained_family_mix"] = trainer.trained_groups()
    divergence = rank_divergence(accelerator, accelerator.unwrap_model(trainer.model))
    if divergence is not None:
        metrics["rank_divergence"] = divergence
    # Every rank evaluates its share of the prompts (with training's mixed precision); ZeRO-3 and FSDP
    # gather the weights to save them
    with accelerator.autocast():
        metrics["eval"], samples = compare_to_sft(
            trainer, held_out, sandbox, script_args.sandbox_eval_batch_size, script_args.sandbox_eval_samples
        )
        if args.ptx_dataset_card:
            ptx_eval, _ = load_card(args.ptx_dataset_card, args.ptx_eval_split, max_rows=200)
            metrics["ptx_loss"], metrics["ptx_loss_sft"] = ptx_losses(trainer, ptx_eval["text"])
    check_publishable(trainer.policy, trainer.step, work)
    state_dict = accelerator.get_state_dict(trainer.model)  # gathered on the main process
    if accelerator.is_main_process:
        outputs.write_jsonl(work / outputs.PPO_SAMPLES_FILE, samples)
        policy_weights = {k.removeprefix("policy."): v for k, v in state_dict.items() if k.startswith("policy.")}
        trainer.policy.save_pretrained(str(work), state_dict=policy_weights)
        tokenizer.save_pretrained(str(work))
        outputs.write_metrics(work, metrics)
        outputs.finish(work, output_dir)
        logger.info("wrote %s: %s", output_dir, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics
