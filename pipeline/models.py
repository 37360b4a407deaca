"""Tokenizer and model loading: the same calls for a local folder and a Hub id."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from jinja2 import TemplateSyntaxError
from peft import AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification, prepare_model_for_kbit_training
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils.chat_template_utils import _compile_jinja_template
from trl import ModelConfig, get_quantization_config

from pipeline import reading
from pipeline.errors import PipelineError

GENERATION_MARKER = "{% generation %}"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
logger = logging.getLogger(__name__)
T = TypeVar("T")
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def require_model(name: str | Path) -> None:
    """A one-line error for a model that cannot be there: a missing folder, or a folder without a model.

    A name that is no folder is left to the Hub when it has the shape of a Hub id (`org/name`) and
    does not start in a local folder (`outputs/sft` is a path).
    """
    path = Path(name)
    if path.is_dir():
        if not (path / "config.json").is_file() and not is_adapter(path):
            raise PipelineError(f"{name} holds no model (no config.json or adapter_config.json)")
        for file in sorted(path.glob("*.json")):
            reading.read_json(file)  # a damaged one is named here, not deep inside transformers
        if is_adapter(path):
            adapter_base(path)
    elif path.exists() or not _HUB_ID.match(str(name)) or Path(path.parts[0]).is_dir():
        raise PipelineError(f"model folder not found: {name}")


def _from_hub(name: str, load: Callable[[], T]) -> T:
    """`load()`, with the Hub's connection errors turned into one line that says what to do."""
    require_model(name)
    try:
        return load()
    except SafetensorError as error:
        damaged = ", ".join(str(p) for p in sorted(Path(name).glob("*.safetensors"))) if Path(name).is_dir() else name
        raise PipelineError(f"the weights in {damaged} cannot be read ({error}): the file is damaged") from error
    except json.JSONDecodeError as error:  # a file of a Hub model's cache
        raise PipelineError(f"a JSON file of {name} cannot be read ({error}): it is damaged") from error
    except OSError as error:
        reason = str(error).strip().splitlines()[0]
        raise PipelineError(
            f"could not load the model {name}: {reason} (offline? point the recipe at a local folder)"
        ) from error


def load_tokenizer(model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token when it has none)."""
    name = model_args.model_name_or_path
    tokenizer = _from_hub(
        name,
        lambda: AutoTokenizer.from_pretrained(
            name, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        ),
    )
    if tokenizer.pad_token is None:
        logger.warning("the tokenizer of %s has no pad token: padding with its EOS token %r", name, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def require_same_vocabulary(
    tokenizer: PreTrainedTokenizerBase, path: str, what: str, reference: str, trust_remote_code: bool = False
) -> None:
    """The model in `path` reads token ids made by `tokenizer` (of `reference`), so its vocabulary must be the same.

    A folder saved without a tokenizer (`model.save_pretrained` alone) has nothing to compare: it is
    taken to read `reference`'s tokens, with a warning.
    """
    folder = Path(path)
    if folder.is_dir() and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        logger.warning("%s has no tokenizer: assuming it reads the token ids of %s", path, reference)
        return
    other = load_tokenizer(ModelConfig(model_name_or_path=path), trust_remote_code)
    if other.get_vocab() != tokenizer.get_vocab():
        raise PipelineError(
            f"the tokenizer of {what} ({path}) differs from that of {reference}: "
            "they read each other's token ids, so they need one vocabulary"
        )


def adapter_base(path: str | Path) -> str:
    """The base model a LoRA adapter folder was trained on."""
    file = Path(path, "adapter_config.json")
    base = reading.read_json_object(file).get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise PipelineError(f"{file} names no base_model_name_or_path: the model the adapter belongs on is unknown")
    return base


def check_chat_template(template: str | dict | None, where: str, assistant_only_loss: bool) -> None:
    """A conversational dataset needs a chat template that is valid Jinja, and assistant-only loss needs
    generation markers. `where`: the tokenizer or file the template is from."""
    if not template:
        raise PipelineError(
            f"the tokenizer of {where} has no chat template, and the dataset is conversational: set "
            "`chat_template_path` in the recipe to a tokenizer folder or a .jinja file that has one"
        )
    for text in template.values() if isinstance(template, dict) else [template]:
        try:
            _compile_jinja_template(text)  # as transformers renders it, with its `generation` tag
        except TemplateSyntaxError as error:
            raise PipelineError(
                f"the chat template of {where} is not valid Jinja (line {error.lineno}: {error.message})"
            ) from error
    if assistant_only_loss and GENERATION_MARKER not in str(template):
        raise PipelineError(
            f"assistant_only_loss needs a chat template with {GENERATION_MARKER} markers, and the one of "
            f"{where} has none: set `assistant_only_loss: false` and use a prompt/completion dataset "
            "(a card with `format: messages_last_turn` makes one from conversations), or give a template "
            "with the markers in `chat_template_path`"
        )


def check_chat_template_path(path: str, assistant_only_loss: bool, trust_remote_code: bool = False) -> None:
    """A recipe's `chat_template_path`: a template file, or a tokenizer folder with a template, that
    `check_chat_template` accepts. A Hub id is left to TRL."""
    where = Path(path)
    if where.is_file():
        check_chat_template(reading.read_text(where), path, assistant_only_loss)
    elif where.is_dir():
        tokenizer = load_tokenizer(ModelConfig(model_name_or_path=path), trust_remote_code)
        check_chat_template(tokenizer.chat_template, path, assistant_only_loss)
    elif where.suffix in (".jinja", ".j2", ".txt") or not _HUB_ID.match(path) or Path(where.parts[0]).is_dir():
        raise PipelineError(f"chat_template_path {path}: no such file or folder")


def _keep_4bit_layout_on_cpu(model: PreTrainedModel) -> PreTrainedModel:
    """Keep bitsandbytes from repacking 4-bit weights for its AVX512-BF16 CPU kernel where it cannot.

    bitsandbytes 0.50 repacks a 4-bit layer at its first no-grad forward pass on such a CPU, and the
    repacking fails ("shape ... is invalid") when the layer's input size is not a multiple of the
    quantisation block (64): the sandbox's small models. Those layers keep the plain 4-bit kernel.
    """
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if hasattr(module, "support_avx512bf16_for_cpu") and state is not None and module.in_features % state.blocksize:
            module.support_avx512bf16_for_cpu = False
    return model


def _load(auto_class: type, model_args: ModelConfig, trust_remote_code: bool, **kwargs) -> PreTrainedModel:
    name = model_args.model_name_or_path
    if is_adapter(name):
        raise PipelineError(
            f"{name} is a LoRA adapter (on {adapter_base(name)}), and this stage starts from full weights: "
            f"merge it first (python -m pipeline merge {name}) and set model_name_or_path to the merged folder"
        )
    dtype = model_args.dtype if model_args.dtype in (None, "auto") else getattr(torch, model_args.dtype)
    model = _from_hub(
        model_args.model_name_or_path,
        lambda: auto_class.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=dtype,
            attn_implementation=model_args.attn_implementation,
            quantization_config=get_quantization_config(model_args),
            trust_remote_code=trust_remote_code,
            use_safetensors=True,
            **kwargs,
        ),
    )
    _check_lora_targets(model, model_args)
    return _keep_4bit_layout_on_cpu(model)


def _check_lora_targets(model: PreTrainedModel, model_args: ModelConfig) -> None:
    """LoRA's `lora_target_modules` must name layers the model has (PEFT's own error names none of them)."""
    targets = model_args.lora_target_modules
    if not model_args.use_peft or not targets or isinstance(targets, str):  # "all-linear", or a regex
        return
    linear = sorted(
        {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    )
    missing = [t for t in targets if t != "all-linear" and t not in linear]
    if missing:
        raise PipelineError(
            f"lora_target_modules {missing} are not layers of {model_args.model_name_or_path}; its linear layers "
            f"are {linear} (or use all-linear)"
        )


def load_causal_lm(model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedModel:
    """The causal LM named by `model_name_or_path`, in the recipe's dtype, 4/8-bit when asked."""
    return _load(AutoModelForCausalLM, model_args, trust_remote_code)


def load_reward_model(model_args: ModelConfig, pad_token_id: int, trust_remote_code: bool = False) -> PreTrainedModel:
    """A scalar-output sequence classifier on top of the named causal LM (its score head is new)."""
    return _load(
        AutoModelForSequenceClassification, model_args, trust_remote_code, num_labels=1, pad_token_id=pad_token_id
    )


def load_gguf(path: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """The tokenizer and the fp32 causal LM of a GGUF file, dequantised, ready for `save_pretrained`."""
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; the GGUF quantizer left attached would refuse to save them
    # and would make the saved config ask for GGUF again
    model.hf_quantizer = None
    del model.config.quantization_config
    tokenizer.model_max_length = model.config.max_position_embeddings  # the GGUF header leaves it unbounded
    return tokenizer, model


def is_adapter(path: str | Path) -> bool:
    """Whether a model folder holds a PEFT adapter rather than full weights."""
    return Path(path, "adapter_config.json").is_file()


def _weight_names(folder: Path, stem: str) -> list[str] | None:
    """The tensor names in a folder's `<stem>.safetensors` (or its sharded index); None when it has neither."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        weight_map = reading.read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise PipelineError(f"{index} has no weight_map: the file is damaged")
        return list(weight_map)
    single = folder / f"{stem}.safetensors"
    if not single.is_file():
        return None
    try:
        with safe_open(str(single), framework="pt") as weights:
            return list(weights.keys())
    except Exception as error:  # safetensors raises its own error type for a truncated or corrupt file
        raise PipelineError(f"{single} cannot be read ({error}): the file is damaged; write it again") from error


def is_sequence_classifier(folder: Path) -> bool:
    """Whether a model folder holds a reward model's kind of model (a sequence classifier), full or LoRA."""
    if is_adapter(folder):
        return reading.read_json_object(folder / "adapter_config.json").get("task_type") == "SEQ_CLS"
    config = folder / "config.json"
    architectures = reading.read_json_object(config).get("architectures") or [] if config.is_file() else []
    return any(str(name).endswith("ForSequenceClassification") for name in architectures)


def require_reward_model(path: str, what: str) -> None:
    """A reward model is a sequence classifier whose score head was trained: a causal LM (or a folder without
    a `score` weight) would score with a randomly initialised head. A Hub id is taken as it is."""
    folder = Path(path)
    if not folder.is_dir():
        return
    names = _weight_names(folder, "adapter_model" if is_adapter(folder) else "model")
    if not is_sequence_classifier(folder) or (names is not None and not any(".score." in f".{n}" for n in names)):
        raise PipelineError(
            f"{what} {path} is not a trained reward model (no sequence-classification score head): give the "
            "output folder of the rm stage"
        )


def load_policy(path: str, model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM from full weights, or from an adapter merged into its base."""
    if Path(path).is_dir() and is_sequence_classifier(Path(path)):
        raise PipelineError(f"{path} is a reward model (a sequence classifier), not a policy: give a causal LM")
    if is_adapter(path):
        model = _from_hub(
            path, lambda: AutoPeftModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code)
        )
        return model.merge_and_unload()
    return load_causal_lm(dataclasses.replace(model_args, model_name_or_path=path), trust_remote_code)


def load_scorer(
    path: str, model_args: ModelConfig, pad_token_id: int, trust_remote_code: bool = False
) -> PreTrainedModel:
    """A reward model (or value model) from full weights, or from an adapter merged into its base."""
    if is_adapter(path):
        model = _from_hub(
            path,
            lambda: AutoPeftModelForSequenceClassification.from_pretrained(
                path, num_labels=1, pad_token_id=pad_token_id, trust_remote_code=trust_remote_code
            ),
        )
        return model.merge_and_unload()
    return load_reward_model(dataclasses.replace(model_args, model_name_or_path=path), pad_token_id, trust_remote_code)


def prepare_quantized(
    model: PreTrainedModel, model_args: ModelConfig, activation_checkpointing: bool
) -> PreTrainedModel:
    """QLoRA: frozen 4/8-bit weights ready for LoRA training (norms in fp32, input grads on); others unchanged."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return model
    if not model_args.use_peft:
        raise PipelineError(
            "load_in_4bit / load_in_8bit train LoRA adapters on frozen quantized weights: set use_peft: true"
        )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing)
