"""Reward modelling: a scalar head on the SFT model learns the labelers' preferences (trl.RewardTrainer).

As in InstructGPT, the RM starts from the SFT policy and trains on every pair of each ranked list,
the pairs of one list in one batch. Full or LoRA (the score head trains and saves with the adapter).
"""

from __future__ import annotations

from transformers import set_seed
from trl import ModelConfig, RewardConfig, get_peft_config

from pipeline.configs import ScriptArguments
from pipeline.models import (
    check_chat_template,
    check_chat_template_path,
    load_reward_model,
    load_tokenizer,
    prepare_quantized,
)
from pipeline.precision import hold_frozen, trainable_in_fp32
from pipeline.reward import GroupedRewardTrainer
from pipeline.reward_evaluation import comparison_rows, evaluate_reward_model
from pipeline.stages.common import fit_long_prompts, load_datasets, start_work, train_evaluate_save


def run(script_args: ScriptArguments, model_args: ModelConfig, training_args: RewardConfig, recipe: dict) -> dict:
    if training_args.chat_template_path:
        check_chat_template_path(training_args.chat_template_path, False, training_args.trust_remote_code)
    # Output folder: work happens in <output_dir>.partial, resumed when the recipe is unchanged
    work, resume, output_dir = start_work(training_args, "rm", recipe)

    # Data: preference pairs; a ranked list's pairs share a `group` and train in one batch
    train_dataset, eval_dataset = load_datasets(script_args)
    held_out = (
        comparison_rows(
            script_args.dataset_card,
            script_args.dataset_test_split,
            script_args.data_files,
            script_args.max_eval_samples,
        )
        if script_args.dataset_test_split
        else []
    )

    # Tokenizer and model: the SFT model with a new scalar head (seeded: the head is random)
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    if isinstance(train_dataset[0]["chosen"], list) and not training_args.chat_template_path:
        check_chat_template(tokenizer.chat_template, model_args.model_name_or_path, assistant_only_loss=False)
    train_dataset, eval_dataset = fit_long_prompts(
        script_args, tokenizer, training_args.max_length, train_dataset, eval_dataset
    )
    set_seed(training_args.seed)
    lora_bf16 = training_args.bf16 and model_args.use_peft  # a frozen base, held in bf16
    model = load_reward_model(model_args, tokenizer.pad_token_id, training_args.trust_remote_code)
    model = prepare_quantized(hold_frozen(model, lora_bf16), model_args, training_args.activation_checkpointing)

    # LoRA: a sequence-classification adapter, which trains and saves the score head with it
    peft_config = get_peft_config(model_args)
    if peft_config is not None:
        peft_config.task_type = "SEQ_CLS"

    # Train, evaluate against the held-out comparisons, save
    trainer = GroupedRewardTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    trainable_in_fp32(trainer.model, lora_bf16)  # the adapter and its score head
    evaluate = (
        (
            lambda trained: evaluate_reward_model(
                trained, tokenizer, held_out, training_args.max_length, script_args.fit_prompts
            )
        )
        if held_out
        else None
    )
    return train_evaluate_save(
        trainer, tokenizer, script_args, work, resume, output_dir, evaluate, given_rows=len(train_dataset)
    )
