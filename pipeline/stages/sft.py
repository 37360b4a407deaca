"""Supervised fine-tuning: a causal LM learns from demonstrations (trl.SFTTrainer, full or LoRA)."""

from __future__ import annotations

from trl import ModelConfig, SFTConfig, SFTTrainer

from pipeline.configs import ScriptArguments
from pipeline.models import check_chat_template, check_chat_template_path, load_tokenizer
from pipeline.stages.common import fit_long_prompts, load_datasets, start_work, train_policy


def run(script_args: ScriptArguments, model_args: ModelConfig, training_args: SFTConfig, recipe: dict) -> dict:
    if training_args.chat_template_path:
        check_chat_template_path(
            training_args.chat_template_path, training_args.assistant_only_loss, training_args.trust_remote_code
        )
    # Output folder: work happens in <output_dir>.partial, resumed when the recipe is unchanged
    work, resume, output_dir = start_work(training_args, "sft", recipe)

    # Data: the card's train and validation splits, in a canonical format
    train_dataset, eval_dataset = load_datasets(script_args)
    conversational = "messages" in train_dataset.column_names or isinstance(train_dataset[0].get("prompt"), list)

    # Tokenizer: the model's own, with its chat template for conversational data
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    if conversational and not training_args.chat_template_path:
        check_chat_template(tokenizer.chat_template, model_args.model_name_or_path, training_args.assistant_only_loss)
    train_dataset, eval_dataset = fit_long_prompts(
        script_args, tokenizer, training_args.max_length, train_dataset, eval_dataset
    )

    # Model (full weights, LoRA or QLoRA); train, evaluate, save
    return train_policy(
        SFTTrainer,
        script_args,
        model_args,
        training_args,
        tokenizer,
        train_dataset,
        eval_dataset,
        work,
        resume,
        output_dir,
    )
