"""The recipe stages, in one table: the CLI, the demo chain, the report, the model card and `make help` read it.

Adding a stage: a module in `pipeline/stages/` whose `run(*configs, recipe=...)` runs it, a row here,
and its recipes. Nothing here imports torch or TRL; a stage's config classes load when it runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Stage:
    name: str  # `python -m pipeline <name> --config RECIPE`
    module: str  # pipeline.stages.<module>
    configs: tuple[str, ...]  # its config dataclasses, "module:Class" (a bare name is in pipeline.configs)
    folder: str  # its output folder in a run folder such as outputs/demo
    title: str  # what reports and model cards call it
    summary: str  # one line for --help

    def config_classes(self) -> tuple[type, ...]:
        classes = []
        for spec in self.configs:
            module, _, name = spec.rpartition(":")
            classes.append(getattr(importlib.import_module(module or "pipeline.configs"), name))
        return tuple(classes)

    def run(self, configs: tuple, recipe: dict[str, Any]) -> Any:
        return importlib.import_module(f"pipeline.stages.{self.module}").run(*configs, recipe=recipe)


_TRAINED = ("ScriptArguments", "trl:ModelConfig")
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "base",
            "base",
            ("ScriptArguments", "TinyModelConfig", "trl:SFTConfig"),
            "base",
            "base",
            "pretrain the sandbox's tiny Llama and its tokenizer",
        ),
        Stage("sft", "sft", (*_TRAINED, "trl:SFTConfig"), "sft", "SFT", "supervised fine-tuning (TRL's SFTTrainer)"),
        Stage(
            "label",
            "label",
            ("LabelConfig",),
            "comparisons",
            "comparisons",
            "K sampled responses per prompt, ranked by the sandbox's labelers",
        ),
        Stage(
            "rm", "rm", (*_TRAINED, "trl:RewardConfig"), "rm", "reward model", "the reward model (TRL's RewardTrainer)"
        ),
        Stage("ppo", "ppo", (*_TRAINED, "PPOConfig"), "ppo", "PPO", "PPO and PPO-ptx against the reward model"),
        Stage(
            "rloo",
            "online_rl",
            (*_TRAINED, "RewardModelArguments", "trl:RLOOConfig"),
            "rloo",
            "RLOO",
            "TRL's RLOOTrainer against the reward model",
        ),
        Stage(
            "grpo",
            "online_rl",
            (*_TRAINED, "RewardModelArguments", "trl:GRPOConfig"),
            "grpo",
            "GRPO",
            "TRL's GRPOTrainer against the reward model",
        ),
    )
}


def stage(name: str) -> Stage:
    if name not in STAGES:
        raise PipelineError(f"no stage {name!r}; the stages are {', '.join(STAGES)}")
    return STAGES[name]
