"""The steps every trainer-backed stage shares: data from cards, train with resume, evaluate, save."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from trl import ModelConfig, get_peft_config

from pipeline import outputs
from pipeline.configs import ScriptArguments
from pipeline.data import load_card, read_card
from pipeline.data.fitting import fit_prompts
from pipeline.data.loading import raw_split
from pipeline.distributed import engine, local_part, num_machines, rank_divergence, require_engine
from pipeline.errors import PipelineError, RecipeError
from pipeline.evaluation import evaluate_policy
from pipeline.inputs import recipe_paths
from pipeline.models import load_causal_lm, prepare_quantized
from pipeline.precision import hold_frozen, trainable_in_fp32

logger = logging.getLogger(__name__)


class StopOnNonFinite(TrainerCallback):
    """Stops a trainer at the first logged loss, gradient norm or reward that is NaN or inf.

    It raises while the step is logged, before the trainer saves that step's checkpoint, so the last
    checkpoint is one from before; a NaN between two logging steps is caught at the next one.
    """

    KEYS = ("loss", "grad_norm", "reward")

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: dict | None = None, **_: Any) -> None:
        bad = [key for key in self.KEYS if isinstance((logs or {}).get(key), float) and not math.isfinite(logs[key])]
        if bad:
            raise PipelineError(
                f"step {state.global_step}: {', '.join(bad)} not finite (NaN or inf); the last checkpoint in "
                f"{args.output_dir} is kept: lower the learning rate, then run again"
            )


class LogAtCheckpoints(TrainerCallback):
    """Logs the loss at every checkpoint, so the logged losses of a resumed run cover every step (`run_loss`)."""

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **_: Any) -> None:
        if control.should_save:
            control.should_log = True


def start_work(training_args: TrainingArguments, stage: str, recipe: dict) -> tuple[Path, bool, str]:
    """(work folder, whether to resume it, final output folder): the trainer writes into `<output_dir>.partial`."""
    output_dir = training_args.output_dir
    work, resume = outputs.start(output_dir, stage, recipe, recipe_paths(recipe))
    training_args.output_dir = str(work)
    # The Trainer pickles its arguments into every checkpoint and the output (training_args.bin); pushes
    # take the token from the environment or the login cache (pipeline/hub.py), so a recipe's is dropped
    training_args.hub_token = None
    return work, resume, output_dir


def run_loss(log_history: list[dict]) -> float | None:
    """The mean training loss over every logged step of the run, whether or not it was resumed.

    The Trainer's own `training_loss` averages only the steps since it last started, so a resumed
    run would report a different figure from the same run left alone; with `LogAtCheckpoints` every
    checkpoint ends a logged span, so the spans of a resumed run are those of an uninterrupted one.
    """
    total = steps = last = 0
    for entry in log_history:
        if "loss" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps, last = steps + entry["step"] - last, entry["step"]
    return total / steps if steps else None


def _rows_of(split: str, size: int) -> range:
    """The rows of a one-file split (`train`, or a slice such as `train[90%:]`) of a file of `size` rows."""
    part = datasets.ReadInstruction.from_spec(split if "[" in split else "train").to_absolute({"train": size})[0]
    return range(part.from_ or 0, size if part.to is None else part.to)


def require_held_out(card: str, files: str, train_split: str, test_split: str) -> None:
    """With `data_files` every split is the one file: the held-out rows must be a slice apart from the training
    rows, or the held-out figures (RM accuracy, reward statistics, eval loss) would be measured on training rows."""
    size = len(raw_split(read_card(card), "train", files))
    train, test = _rows_of(train_split, size), _rows_of(test_split, size)
    if max(train.start, test.start) < min(train.stop, test.stop):
        raise RecipeError(
            f"with data_files {files}, splits {train_split!r} and {test_split!r} share rows: held-out figures "
            "would be measured on training rows; give each a slice (dataset_train_split: 'train[:90%]', "
            "dataset_test_split: 'train[90%:]') or set dataset_test_split: null"
        )


def load_datasets(script_args: ScriptArguments) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The train split and the optional eval split of the recipe's data card (never the same rows)."""
    card, files = script_args.dataset_card, script_args.data_files
    train, _ = load_card(card, script_args.dataset_train_split, files, script_args.max_train_samples)
    if not script_args.dataset_test_split:
        return train, None
    if files:
        require_held_out(card, files, script_args.dataset_train_split, script_args.dataset_test_split)
    evaluation, _ = load_card(card, script_args.dataset_test_split, files, script_args.max_eval_samples)
    return train, evaluation


def fit_long_prompts(
    script_args: ScriptArguments,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    train: datasets.Dataset,
    evaluation: datasets.Dataset | None,
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The splits with over-long prompts cut from the left (data/fitting.py) when the recipe sets fit_prompts."""
    if not script_args.fit_prompts:
        return train, evaluation
    if max_length is None or not isinstance(train[0].get("prompt"), list):
        raise RecipeError("fit_prompts needs max_length and a card whose rows have a conversational prompt")
    card = script_args.dataset_card

    def fit(split: datasets.Dataset, name: str) -> datasets.Dataset:
        return fit_prompts(split, tokenizer, max_length, f"{card} [{name}]")

    return fit(train, script_args.dataset_train_split), evaluation and fit(evaluation, script_args.dataset_test_split)


def check_publishable(model: torch.nn.Module, steps: int, where: Path) -> None:
    """A stage publishes only what it trained: at least one optimiser step, and every weight finite.

    Every rank checks its own part of sharded weights, and all ranks stop together.
    """
    if steps < 1:
        raise PipelineError(f"no optimiser step was taken: nothing is published ({where} keeps the run)")
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(local_part(p).detach()).all()), None)
    if PartialState().num_processes > 1:
        bad = next((name for name in gather_object([bad]) if name is not None), None)
    if bad is not None:
        raise PipelineError(
            f"the trained weight {bad} is not finite (NaN or inf): nothing is published ({where} keeps the "
            "run); lower the learning rate, or check the data, then run again"
        )


def train_evaluate_save(
    trainer: Trainer,
    tokenizer: PreTrainedTokenizerBase,
    script_args: ScriptArguments,
    work: Path,
    resume: bool,
    output_dir: str,
    evaluate: Callable[[PreTrainedModel], dict] | None = None,
    given_rows: int | None = None,
) -> dict:
    """Train (resuming a checkpoint of the same recipe), measure, save into `work`, move to `output_dir`.

    `evaluate` adds a stage's own figures, measured on the trained model before it is saved. `given_rows`:
    the rows handed to the trainer, which drops those that do not fit `max_length` (RewardTrainer: pairs
    longer than it; SFTTrainer: rows whose trained tokens all lie past it); the dropped are counted in
    `train_rows_too_long`.
    """
    args = trainer.args
    require_engine(trainer.accelerator)
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise PipelineError(
            f"{script_args.dataset_card}: no training row is left (the trainer drops rows longer than max_length "
            f"{getattr(args, 'max_length', None)}): raise max_length, or set fit_prompts: true"
        )
    if given_rows is not None and kept < given_rows:
        logger.warning(
            "%s: %d of %d training rows do not fit max_length (%s) and are left out; %d train",
            script_args.dataset_card,
            given_rows - kept,
            given_rows,
            getattr(args, "max_length", None),
            kept,
        )
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    logger.info(
        "effective batch size %d (%d per device x %d accumulation x %d processes)",
        effective,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        args.world_size,
    )
    planned = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * -(-kept // effective))
    if args.max_steps <= 0 and args.num_train_epochs > 100:
        logger.warning(
            "num_train_epochs %g over %d rows is %d optimiser steps: is that meant?",
            args.num_train_epochs,
            kept,
            planned,
        )
    if resume:
        logger.info("resuming from the last checkpoint in %s", work)
    trainer.add_callback(StopOnNonFinite())
    trainer.add_callback(LogAtCheckpoints())
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    logged_loss = run_loss(trainer.state.log_history)
    check_publishable(trainer.model, result.global_step, work)
    metrics = {
        "train_rows": kept,
        "train_loss": result.training_loss if logged_loss is None else logged_loss,
        "train_runtime": result.metrics["train_runtime"],
        "train_steps": result.global_step,
        "effective_batch_size": effective,
        "num_processes": args.world_size,
        "num_machines": num_machines(),
        "engine": engine(trainer.accelerator),
    }
    if given_rows is not None:
        metrics["train_rows_too_long"] = given_rows - kept
    divergence = rank_divergence(trainer.accelerator, trainer.model)
    if divergence is not None:
        metrics["rank_divergence"] = divergence
    if trainer.eval_dataset is not None and len(trainer.eval_dataset) == 0:
        logger.warning("%s: every held-out row is longer than max_length: no eval_loss", script_args.dataset_card)
    elif trainer.eval_dataset is not None:
        found = trainer.evaluate()
        # DPOTrainer's implicit reward, beta x log(policy / reference), on the held-out pairs
        metrics.update({k: v for k, v in found.items() if k == "eval_loss" or k.startswith("eval_rewards/")})
        metrics["eval_rows"] = len(trainer.eval_dataset)
    with trainer.accelerator.autocast():  # in training's precision
        if script_args.sandbox_eval_prompts:
            metrics.update(
                evaluate_policy(
                    trainer.model,
                    tokenizer,
                    script_args.sandbox_eval_prompts,
                    script_args.sandbox_eval_max_new_tokens,
                    script_args.sandbox_eval_batch_size,
                    samples_dir=work if trainer.is_world_process_zero() else None,
                )
            )
        if evaluate is not None:
            metrics.update(evaluate(trainer.model))
    trainer.save_model(str(work))
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(work))
        outputs.write_jsonl(work / outputs.LOG_FILE, trainer.state.log_history)
        outputs.write_metrics(work, metrics)
        outputs.finish(work, output_dir)
        logger.info("wrote %s: %s", output_dir, {k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return metrics


def train_policy(
    trainer_class: type[Trainer],
    script_args: ScriptArguments,
    model_args: ModelConfig,
    training_args: TrainingArguments,
    tokenizer: PreTrainedTokenizerBase,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    work: Path,
    resume: bool,
    output_dir: str,
) -> dict:
    """Load the causal LM, train it with a TRL trainer (SFTTrainer, DPOTrainer), evaluate and save.

    Full weights (fp32 masters under bf16), or a LoRA adapter on a frozen base (bf16 under bf16; 4-bit with
    load_in_4bit), which the trainer wraps from `model_args`' PEFT config.
    """
    lora_bf16 = training_args.bf16 and model_args.use_peft
    model = hold_frozen(load_causal_lm(model_args, training_args.trust_remote_code), lora_bf16)
    model = prepare_quantized(model, model_args, training_args.activation_checkpointing)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainable_in_fp32(trainer.model, lora_bf16)
    return train_evaluate_save(trainer, tokenizer, script_args, work, resume, output_dir, given_rows=len(train_dataset))
