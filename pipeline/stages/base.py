"""Pretraining the sandbox's tiny Llama base model on raw sandbox text (the stand-in for a Hub model)."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from pipeline.configs import ScriptArguments, TinyModelConfig
from pipeline.sandbox.tokenizer import train_tokenizer
from pipeline.stages.common import load_datasets, start_work, train_evaluate_save


def run(script_args: ScriptArguments, model_args: TinyModelConfig, training_args: SFTConfig, recipe: dict) -> dict:
    # Output folder: work happens in <output_dir>.partial, resumed when the recipe is unchanged
    work, resume, output_dir = start_work(training_args, "base", recipe)

    # Data: raw text from the pretraining card
    train_dataset, eval_dataset = load_datasets(script_args)

    # Tokenizer: learnt from that text (kept in the work folder, so a resumed run reuses it)
    if (work / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(work)
    else:
        tokenizer = train_tokenizer(train_dataset["text"], model_args.template_min_count)
        tokenizer.save_pretrained(work)

    # Model: a tiny Llama, randomly initialised from a fixed seed
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_args.hidden_size,
        intermediate_size=model_args.intermediate_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        max_position_embeddings=model_args.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(model_args.model_seed)
    model = LlamaForCausalLM(config)

    # Train (plain causal-LM loss on every token), evaluate, save
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
    )
    return train_evaluate_save(trainer, tokenizer, script_args, work, resume, output_dir)
