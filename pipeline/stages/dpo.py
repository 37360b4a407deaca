"""Direct preference optimisation: the SFT policy learns the labelers' preferences with no reward model
(trl.DPOTrainer, Rafailov et al. 2023).

It reads what the RM reads: the label stage's ranked lists (all their pairs, the best against each of the
rest, or the best against the worst: `preference_pairs`) or any preference card. Full weights (the
reference is a frozen copy of the SFT policy), LoRA (the reference is the base with the adapter disabled)
or QLoRA; `loss_type` and `beta` are TRL's.
"""

from __future__ import annotations

import datasets
from trl import DPOConfig, DPOTrainer, ModelConfig

from pipeline.configs import PreferencePairArguments, ScriptArguments
from pipeline.models import check_chat_template, load_tokenizer
from pipeline.stages.common import fit_long_prompts, load_datasets, start_work, train_policy


def pair_indices(rows: list[dict], which: str) -> list[int]:
    """The rows of a ranked list's pairs that `which` keeps: `all`; `best_vs_rest`, the pairs whose chosen is
    the list's best; `best_vs_worst`, the pair of its best and its worst. A row without a `group` (a plain
    preference card) is a pair of its own, always kept.

    A list's pairs come best first (formats.ranked): its first row's chosen is its best response and its
    last row's rejected its worst.
    """
    groups: dict[object, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row.get("group", ("row", index)), []).append(index)
    kept = []
    for members in groups.values():
        best, worst = rows[members[0]]["chosen"], rows[members[-1]]["rejected"]
        for index in members:
            chosen, rejected = rows[index]["chosen"], rows[index]["rejected"]
            if which == "all" or chosen == best and (which == "best_vs_rest" or rejected == worst):
                kept.append(index)
    return sorted(kept)


def select_pairs(dataset: datasets.Dataset, which: str) -> datasets.Dataset:
    """The pairs `pair_indices` keeps, without the `group` column DPOTrainer does not read."""
    columns = [name for name in ("prompt", "chosen", "rejected", "group") if name in dataset.column_names]
    kept = dataset.select(pair_indices(dataset.select_columns(columns).to_list(), which))
    return kept.remove_columns([name for name in ("group", "margin") if name in kept.column_names])


def run(
    script_args: ScriptArguments,
    model_args: ModelConfig,
    pair_args: PreferencePairArguments,
    training_args: DPOConfig,
    recipe: dict,
) -> dict:
    # Output folder: work happens in <output_dir>.partial, resumed when the recipe is unchanged
    work, resume, output_dir = start_work(training_args, "dpo", recipe)

    # Data: preference pairs; of a ranked list, those `preference_pairs` names (held out: every pair, as the RM's
    # accuracy is measured)
    train_dataset, eval_dataset = load_datasets(script_args)
    train_dataset = select_pairs(train_dataset, pair_args.preference_pairs)
    eval_dataset = eval_dataset and select_pairs(eval_dataset, "all")

    # Tokenizer: the policy's, with its chat template for conversational pairs
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    if isinstance(train_dataset[0]["chosen"], list):
        check_chat_template(tokenizer.chat_template, model_args.model_name_or_path, assistant_only_loss=False)
    train_dataset, eval_dataset = fit_long_prompts(
        script_args, tokenizer, training_args.max_length, train_dataset, eval_dataset
    )

    # Model: full weights (TRL loads the frozen reference from the same folder), or a LoRA adapter whose base,
    # with the adapter disabled, is the reference; train, evaluate (held-out loss and implicit-reward accuracy), save
    return train_policy(
        DPOTrainer,
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
