"""Recipe -> config dataclasses: TRL's own (SFTConfig, RewardConfig, ModelConfig) plus the few we add.

A recipe is one flat YAML mapping, as in the alignment-handbook; `--key value` overrides go on top.
Every key must belong to one of the stage's dataclasses; a misspelt key, a wrong type or an
impossible value is a RecipeError that names the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import yaml
from transformers import HfArgumentParser, TrainingArguments

from pipeline import reading
from pipeline.distributed import CPU_BACKEND, cpu_ranks
from pipeline.errors import RecipeError
from pipeline.precision import resolve_auto

if TYPE_CHECKING:
    from pipeline.registry import Command


@dataclass
class ScriptArguments:
    """What a stage trains on and how the sandbox judges it."""

    dataset_card: str = field(metadata={"help": "Path of the data card (data_cards/<name>.md) to train on."})
    data_files: str | None = field(default=None, metadata={"help": "Local files (path or glob) in the card's format."})
    dataset_train_split: str = "train"
    dataset_test_split: str | None = field(
        default="validation", metadata={"help": "Split for eval_loss; none to skip."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep the first N training rows."})
    max_eval_samples: int | None = None
    fit_prompts: bool = field(
        default=False,
        metadata={
            "help": "Cut a conversational prompt's earliest turns until prompt + response fit max_length "
            "(counted in the log; rows that cannot fit are dropped)."
        },
    )
    sandbox_eval_prompts: int = field(
        default=0, metadata={"help": "Greedy gold evaluation on this many sandbox test prompts (0: off)."}
    )
    sandbox_eval_max_new_tokens: int = 32
    sandbox_eval_batch_size: int = 100
    sandbox_eval_samples: int = field(
        default=1, metadata={"help": "PPO's end-of-run comparison: answers sampled per prompt besides the greedy one."}
    )
    balance_families: bool = field(
        default=True,
        metadata={
            "help": "PPO, RLOO, GRPO on sandbox prompts: every task family as often as the largest one "
            "(a smaller family's prompts recur)."
        },
    )


@dataclass
class PreferencePairArguments:
    """Which pairs of a ranked list the dpo stage trains on."""

    preference_pairs: Literal["all", "best_vs_rest", "best_vs_worst"] = field(
        default="all",
        metadata={
            "help": "Of K ranked responses: all K(K-1)/2 pairs (as the RM trains), the best against each of the "
            "K-1 others, or the best against the worst."
        },
    )


@dataclass
class TinyModelConfig:
    """Shape of the sandbox's tiny Llama base model and its tokenizer (the `base` stage)."""

    template_min_count: int = field(
        default=100, metadata={"help": "A word seen this often in the text (and not world content) is one token."}
    )
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256
    model_seed: int = 0


@dataclass
class LabelConfig:
    """Comparisons the InstructGPT way: K sampled responses per prompt, ranked by the sandbox's labelers."""

    model_name_or_path: str = field(metadata={"help": "The policy to sample from (the SFT output)."})
    output_dir: str = field(metadata={"help": "Where train.jsonl and test.jsonl (ranked lists) go."})
    prompts_card: str = "data_cards/sandbox_prompts.md"
    prompts_split: str = "comparison"
    prompts_per_family: int = field(default=200, metadata={"help": "Prompts per task family (recurring if few)."})
    num_responses: int = field(default=4, metadata={"help": "K responses ranked per prompt (4 to 9 in InstructGPT)."})
    temperature: float = 1.0
    max_new_tokens: int = 32
    generation_batch_size: int = 256
    labeler_temperature: float = 0.1
    contrast_per_prompt: int = field(
        default=0, metadata={"help": "Right-vs-wrong pairs in one wrapper added per training prompt."}
    )
    test_fraction: float = 0.1
    bf16: bool = field(
        default=False, metadata={"help": "Sample with the policy's weights in bf16 (auto: by hardware)."}
    )
    generation_engine: str = field(
        default="torch", metadata={"help": "Who samples: torch (the pipeline's sampler) or vllm (make setup-vllm)."}
    )
    seed: int = 0


@dataclass
class PPOConfig(TrainingArguments):
    """PPO and PPO-ptx, in the vocabulary of TRL's PPOConfig, plus InstructGPT's additions.

    One update rolls out `per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches`
    prompts per process, then takes `num_ppo_epochs x num_mini_batches` optimiser steps on them.
    """

    sft_model_path: str = field(default="", metadata={"help": "The SFT policy (full weights or a LoRA adapter)."})
    reward_model_path: str = field(default="", metadata={"help": "The reward model (full or LoRA)."})
    value_model_path: str | None = field(default=None, metadata={"help": "Value model init (default: the RM)."})
    total_episodes: int = field(default=1024, metadata={"help": "Prompts rolled out over the whole run."})
    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    local_rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Rows per forward pass while rolling out (generation and scoring)."}
    )
    response_length: int = 32
    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Tokens a prompt keeps after the chat template, its last ones (counted in the log)."},
    )
    temperature: float = 1.0
    generation_engine: Literal["torch", "vllm"] = field(
        default="torch",
        metadata={"help": "Who samples rollouts: torch (the pipeline's sampler) or vllm (make setup-vllm)."},
    )
    stop_token: Literal["eos"] | None = field(default="eos", metadata={"help": "Truncate responses after it."})
    missing_eos_penalty: float | None = field(
        default=None, metadata={"help": "Subtracted from the (normalised) score of a response without EOS."}
    )
    kl_coef: float = field(default=0.05, metadata={"help": "Initial KL coefficient (fixed unless kl_target)."})
    kl_estimator: Literal["k1", "k3"] = "k1"
    kl_target: float | None = field(
        default=None, metadata={"help": "Adaptive KL controller's target (nats per response); none: fixed."}
    )
    kl_horizon: int = field(default=10000, metadata={"help": "Adaptive KL controller's horizon, in episodes."})
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    value_learning_rate: float | None = field(default=None, metadata={"help": "Default: learning_rate."})
    critic_warmup_updates: int = field(
        default=0,
        metadata={
            "help": "The first updates train the value model alone, the policy frozen (OpenRLHF's "
            "freezing_actor_steps), so advantages come from a critic that has seen returns; their episodes count."
        },
    )
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    normalize_reward: bool = field(
        default=True,
        metadata={
            "help": "Score = (RM score - mean) / std: the RM's metrics.json reward_mean and reward_std, or, for an "
            "RM without them (a Hub model), the mean and std of the first rollout's scores."
        },
    )
    gold_reward_scale: float = field(
        default=0.0,
        metadata={
            "help": "Sandbox diagnostic: score = this x the gold judge instead of the RM (a perfect RM); 0: off."
        },
    )
    ptx_coef: float = field(default=0.0, metadata={"help": "Weight of the pretraining loss (PPO-ptx); 0: plain PPO."})
    ptx_dataset_card: str | None = field(default=None, metadata={"help": "Pretraining text for the ptx term."})
    ptx_dataset_split: str = "train"
    ptx_eval_split: str = field(default="validation", metadata={"help": "Where metrics.json's ptx_loss is measured."})
    ptx_batch_size: int = field(default=8, metadata={"help": "Pretraining documents per micro-batch."})
    ptx_max_length: int = 128
    logging_steps: float = 1
    save_steps: float = 10
    trust_remote_code: bool = False
    # Computed from the keys above and the number of processes, in TRL's PPOTrainer's names
    mini_batch_size: int = field(init=False, default=0)  # episodes per optimiser step, per process
    local_batch_size: int = field(init=False, default=0)  # episodes per rollout, per process
    batch_size: int = field(init=False, default=0)  # episodes per rollout, all processes
    num_updates: int = field(init=False, default=0)  # rollouts in the run

    def __post_init__(self) -> None:
        super().__post_init__()
        # A mini-batch is per_device x accumulation, and a rollout num_mini_batches of them. TRL's PPOTrainer
        # rolls out per_device x accumulation and cuts that into num_mini_batches, so with the same keys our
        # rollout is num_mini_batches times larger
        self.mini_batch_size = self.per_device_train_batch_size * self.gradient_accumulation_steps
        self.local_batch_size = self.mini_batch_size * self.num_mini_batches
        self.batch_size = self.local_batch_size * self.world_size
        self.num_updates = -(-self.total_episodes // self.batch_size)
        if self.critic_warmup_updates >= self.num_updates:
            raise ValueError(
                f"critic_warmup_updates ({self.critic_warmup_updates}) leaves none of the run's {self.num_updates} "
                "updates to train the policy"
            )
        if self.total_episodes < self.batch_size:
            raise ValueError(
                f"total_episodes ({self.total_episodes}) is less than one rollout ({self.batch_size} episodes: "
                "per_device_train_batch_size x gradient_accumulation_steps x num_mini_batches x processes)"
            )
        for key in ("sft_model_path", "reward_model_path"):
            if not getattr(self, key):
                raise ValueError(f"the ppo stage needs {key!r}")
        if self.ptx_coef > 0 and not self.ptx_dataset_card:
            raise ValueError("ptx_coef > 0 needs ptx_dataset_card (the pretraining text)")
        if self.temperature <= 0:
            raise ValueError(f"PPO samples its rollouts: temperature must be > 0, got {self.temperature}")


@dataclass
class RewardModelArguments:
    """The reward function of TRL's online trainers (RLOO, GRPO): our reward model."""

    reward_model_path: str = field(metadata={"help": "The reward model folder (full or LoRA)."})


# Values no run can use; TrainingArguments itself accepts most of them silently.
_POSITIVE = set(
    "learning_rate num_train_epochs per_device_train_batch_size per_device_eval_batch_size "
    "gradient_accumulation_steps lora_r lora_alpha max_length template_min_count hidden_size intermediate_size "
    "num_hidden_layers num_attention_heads max_position_embeddings sandbox_eval_max_new_tokens "
    "sandbox_eval_batch_size max_train_samples max_eval_samples prompts_per_family max_new_tokens "
    "generation_batch_size total_episodes num_ppo_epochs num_mini_batches local_rollout_forward_batch_size "
    "response_length kl_horizon cliprange cliprange_value ptx_batch_size ptx_max_length kl_target "
    "value_learning_rate max_prompt_length temperature".split()
)
_NON_NEGATIVE = set(
    "weight_decay max_grad_norm warmup_steps sandbox_eval_prompts logging_steps "
    "labeler_temperature contrast_per_prompt center_rewards_coefficient kl_coef vf_coef ptx_coef gold_reward_scale "
    "missing_eos_penalty critic_warmup_updates".split()
)
_UNIT_INTERVAL = {"lora_dropout", "test_fraction", "gamma", "lam"}
_OPEN_UNIT_INTERVAL = {"cliprange"}  # a ratio clipped to [1 - c, 1 + c]: c in (0, 1)
_RANGES = {"num_responses": (2, 9)}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """`value` checked (and widened int -> float) against the annotation `tp`; RecipeError if it cannot fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, value, option)
            except RecipeError:
                continue
    elif origin is typing.Literal:
        if value in args:
            return value
    elif origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str) and args and args[0] is str:
            return [value]  # `lora_target_modules: all-linear` reads as a one-item list
        if isinstance(value, (list, tuple)):
            return [_coerce(key, v, args[0]) if args else v for v in value]
    elif origin is dict or tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        if value in {m.value for m in tp} or isinstance(value, tp):
            return value
    else:
        return value
    raise RecipeError(f"recipe key {key!r} expects {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _unknown_key(key: str, known: Iterable[str], source: str, stage: str) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key {key!r} in {source} for stage {stage!r}{hint}"


def _check_range(key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if not math.isfinite(value):
        raise RecipeError(f"recipe key {key!r} must be a finite number, got {value}")
    if key in _POSITIVE and value <= 0:
        raise RecipeError(f"recipe key {key!r} must be > 0, got {value}")
    if key in _NON_NEGATIVE and value < 0:
        raise RecipeError(f"recipe key {key!r} must be >= 0, got {value}")
    if key in _UNIT_INTERVAL and not 0 <= value <= 1:
        raise RecipeError(f"recipe key {key!r} must be in [0, 1], got {value}")
    if key in _OPEN_UNIT_INTERVAL and not 0 < value < 1:
        raise RecipeError(f"recipe key {key!r} must be in (0, 1), got {value}")
    if key in _RANGES and not _RANGES[key][0] <= value <= _RANGES[key][1]:
        raise RecipeError(f"recipe key {key!r} must be in [{_RANGES[key][0]}, {_RANGES[key][1]}], got {value}")


def _trackers(value: Any) -> list[str]:
    return [name for name in ([value] if isinstance(value, str) else list(value or [])) if name not in ("none", "all")]


def _check_report_to(value: Any) -> None:
    """`report_to` names trackers transformers knows."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in _trackers(value):
        if name not in INTEGRATION_TO_CALLBACK:
            close = difflib.get_close_matches(name, list(INTEGRATION_TO_CALLBACK), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise RecipeError(f"report_to {name!r} is no tracker transformers knows: {hint}(or none)")


def require_trackers(recipe: dict[str, Any]) -> None:
    """Before a run: the trackers in `report_to` are installed (else the trainer fails after loading everything)."""
    from transformers.integrations.integration_utils import get_available_reporting_integrations

    for name in _trackers(recipe.get("report_to")):
        if name not in get_available_reporting_integrations():
            raise RecipeError(f"report_to {name!r}: the {name} package is not installed; install it, or set none")


class _OverrideParser(HfArgumentParser):
    """TRL's argument parser (transformers' HfArgumentParser) over a stage's config classes, raising RecipeErrors."""

    def __init__(self, classes: tuple[type, ...]) -> None:
        super().__init__(classes, allow_abbrev=False, add_help=False)
        for action in self._actions:
            action.required = False  # a required key may come from the recipe; build_configs checks it

    def error(self, message: str) -> NoReturn:
        raise RecipeError(f"command line: {message}")


def parse_overrides(stage: Command, argv: list[str]) -> dict[str, Any]:
    """`--key value` overrides, typed by HfArgumentParser from the stage's config classes.

    As on TRL's command lines, a bare `--flag` is true, `--no_flag` false, a list takes several values;
    `--key null` sets a key to None, and `--bf16 auto` leaves the choice to the machine (pipeline.precision).
    """
    parser = _OverrideParser(stage.config_classes())
    options = parser._option_string_actions  # --key, --key-with-dashes, --no_flag -> its action
    given, parsed, verbatim = [], [], {}  # verbatim: values the parser cannot type
    key = None  # the key whose values follow
    for arg in argv:
        if arg.startswith("--"):
            option, _, inline = arg.partition("=")
            if option not in options:
                dests = {action.dest for action in parser._actions}
                raise RecipeError(_unknown_key(option[2:], dests, "the command line", stage.name))
            key = options[option].dest
            if found := _verbatim(key, inline):
                verbatim.update(found)
                key = None
                continue
            given.append(key)
            parsed.append(arg)
        elif key is None:
            raise RecipeError(f"expected --key value, got {arg!r}")
        elif parsed[-1].startswith("--") and (found := _verbatim(key, arg)):
            verbatim.update(found)
            given.remove(key)
            parsed.pop()
            key = None
        elif arg.startswith("-") and parsed[-1].startswith("--") and "=" not in parsed[-1]:
            parsed[-1] += f"={arg}"  # argparse would read -1e-3 as an option
        else:
            parsed.append(arg)
    namespace = parser.parse_args(parsed)
    return {**{key: getattr(namespace, key) for key in given}, **verbatim}


def _verbatim(key: str, value: str) -> dict[str, Any]:
    """{key: value} for a value the parser cannot type (`null`; `auto` as `bf16`), else {}."""
    if value == "null":
        return {key: None}
    if key == "bf16" and value == "auto":
        return {key: "auto"}
    return {}


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, str):
                raise RecipeError(f"{self.name}, line {key_node.start_mark.line + 1}: key {key!r} is not text")
            if key in seen:
                raise RecipeError(f"{self.name}, line {key_node.start_mark.line + 1}: key {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_recipe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe not found: {path}")
    recipe = reading.parse_yaml(reading.read_text(path), path, _UniqueKeyLoader) or {}
    if not isinstance(recipe, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of key: value, got {type(recipe).__name__}")
    return recipe


def build_configs(stage: Command, values: dict[str, Any], source: str = "recipe") -> tuple:
    """The stage's config dataclasses, built from a flat mapping of recipe keys."""
    classes, stage = stage.config_classes(), stage.name
    hints = {}
    for cls in reversed(classes):
        fields = {f.name for f in dataclasses.fields(cls) if f.init}
        hints.update({k: v for k, v in typing.get_type_hints(cls).items() if k in fields})
    resolve_auto(values, trainer="use_cpu" in hints)  # `bf16: auto` -> true or false, by this machine
    for key in values:
        if key not in hints:
            raise RecipeError(_unknown_key(key, hints, source, stage))
    checked = {}
    for key, value in values.items():
        checked[key] = _coerce(key, value, hints[key])
        _check_range(key, checked[key])
        if key == "report_to":
            _check_report_to(checked[key])
    if "ddp_find_unused_parameters" in hints:
        # Every trainable weight of our models takes part in each forward pass; under DDP, searching
        # for unused ones would cost a traversal of the autograd graph every step
        checked.setdefault("ddp_find_unused_parameters", False)
    if "ddp_backend" in hints and cpu_ranks():
        # transformers sets the process group up again from its own arguments: DeepSpeed's CPU ranks need gloo
        checked.setdefault("ddp_backend", CPU_BACKEND)
    configs = []
    for cls in classes:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.name not in checked
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if required:
            raise RecipeError(f"{source} for stage {stage!r} lacks required key {required[0]!r}")
        try:
            configs.append(cls(**{k: v for k, v in checked.items() if k in names}))
        except (ValueError, TypeError) as error:
            raise RecipeError(f"{source}: {error}") from error
    return tuple(configs)


def load_configs(stage: Command, recipe_path: str | Path, overrides: list[str] | None = None) -> tuple[tuple, dict]:
    """(config dataclasses, resolved recipe mapping) for a recipe file plus `--key value` overrides."""
    values = {**read_recipe(recipe_path), **parse_overrides(stage, overrides or [])}
    return build_configs(stage, values, source=str(recipe_path)), values
