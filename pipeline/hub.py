"""Merge a LoRA adapter into its base, and publish a stage's output folder to the Hub with a model card.

The token comes from `HF_TOKEN` or the login cache (`huggingface_hub.get_token`); it is handed to
`HfApi` calls only, never printed and never written to a file.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import safe_open
from trl import ModelConfig

from pipeline import outputs
from pipeline.data import read_card
from pipeline.errors import PipelineError
from pipeline.models import (
    adapter_base,
    is_adapter,
    is_sequence_classifier,
    load_policy,
    load_scorer,
    load_tokenizer,
)
from pipeline.registry import STAGES

# What a published folder holds: weights or adapter, configs, tokenizer, the recipe and metrics.
# Left out: training_args.bin (a pickle), checkpoints, logs, samples and the chain's records.
UPLOAD_PATTERNS = (
    "*.safetensors",
    "config.json",
    "adapter_config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "vocab*",
    "merges.txt",
    "*.jinja",
    outputs.RECIPE_FILE,
    outputs.METRICS_FILE,
)
# Recipe keys that name the model a stage started from, in the order they are followed.
PARENT_KEYS = ("model_name_or_path", "sft_model_path")
STAGE_TITLES = {name: stage.title for name, stage in STAGES.items()}


def _same_model(a: str, b: str) -> bool:
    return a == b or (Path(a).exists() and Path(b).exists() and Path(a).resolve() == Path(b).resolve())


def _check_run(run_dir: Path, merged: bool) -> None:
    if not (run_dir / "config.json").is_file() and not is_adapter(run_dir):
        raise PipelineError(f"{run_dir} is not a model output folder (no config.json or adapter_config.json)")
    if merged and not is_adapter(run_dir):
        raise PipelineError(f"{run_dir} holds full weights, not a LoRA adapter: there is nothing to merge")
    recipe = outputs.read_recipe_file(run_dir)
    key = next((k for k in PARENT_KEYS if recipe.get(k)), None)
    if is_adapter(run_dir) and key is not None and not _same_model(adapter_base(run_dir), str(recipe[key])):
        raise PipelineError(
            f"{run_dir / 'adapter_config.json'}: the adapter's base_model_name_or_path {adapter_base(run_dir)} "
            f"is not the recipe's {key} {recipe[key]}: the adapter would be applied to other weights"
        )


def merge_into(run_dir: Path, folder: Path) -> None:
    """Save the adapter of `run_dir` merged into its base (full safetensors weights + tokenizer) in `folder`."""
    tokenizer = load_tokenizer(ModelConfig(model_name_or_path=str(run_dir)))
    if is_sequence_classifier(run_dir):
        model = load_scorer(str(run_dir), ModelConfig(), tokenizer.pad_token_id)
    else:
        model = load_policy(str(run_dir), ModelConfig())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in (outputs.RECIPE_FILE, outputs.METRICS_FILE):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, folder / name)


@contextlib.contextmanager
def _building(target: Path, inputs: list[Path]) -> Iterator[Path]:
    """A fresh `<target>.partial` folder, renamed to `target` when the block succeeds and removed when it fails.

    `target` must be the command's own (`outputs.check_output_dir`): not one of its `inputs`, nor around them.
    """
    outputs.check_output_dir(target, inputs)
    work = outputs.partial_dir(target)
    outputs.remove_own(work)
    outputs.make_own(work)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    outputs.finish(work, target)


def merge(run_dir: str | Path, output_dir: str | Path | None = None) -> Path:
    """`<run_dir>_merged` (or `output_dir`): the adapter merged into its base, written atomically."""
    run_dir = Path(run_dir)
    _check_run(run_dir, merged=True)
    output_dir = Path(output_dir or f"{run_dir}_merged")
    inputs = [run_dir] + [Path(base) for base in [adapter_base(run_dir)] if Path(base).exists()]
    with _building(output_dir, inputs) as work:
        merge_into(run_dir, work)
    return output_dir


def lineage(run_dir: Path) -> list[tuple[str, str]]:
    """(stage, folder) from the first model this output descends from to itself, read from recipe.yaml files.

    The first entry is ("hub", id) when the first stage started from a Hub model or from a GGUF import of one.
    """
    chain, folder = [], run_dir
    for _ in range(10):  # output folders that name each other would otherwise loop
        recipe = outputs.read_recipe_file(folder)
        chain.append((recipe.get("stage", "?"), str(folder)))
        parent = next((recipe[k] for k in PARENT_KEYS if recipe.get(k)), None)
        if parent is None:
            if recipe.get("base_model"):  # an imported checkpoint (import-gguf) names its Hub source
                chain.append(("hub", recipe["base_model"]))
            break
        if not Path(parent, outputs.RECIPE_FILE).is_file():
            chain.append(("local" if Path(parent).exists() else "hub", parent))
            break
        folder = Path(parent)
    return list(reversed(chain))


def model_card(run_dir: Path, repo_id: str, merged: bool, license_id: str) -> ModelCard:
    """The README.md of a pushed folder: Hub metadata, the stage chain, the metrics, the recipe, how to load."""
    recipe, stages = outputs.read_recipe_file(run_dir), lineage(run_dir)
    metrics = outputs.read_metrics(run_dir)
    adapter = is_adapter(run_dir) and not merged
    reward_model = is_sequence_classifier(run_dir)
    hub_base = next((folder for stage, folder in stages if stage == "hub"), None)
    cards = [read_card(recipe[k]) for k in ("dataset_card", "ptx_dataset_card") if Path(recipe.get(k) or "").is_file()]
    datasets = [card.hub for card in cards if card.hub]
    stage = recipe.get("stage", "model")
    data = ModelCardData(
        base_model=hub_base,
        datasets=datasets or None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-classification" if reward_model else "text-generation",
        license=license_id,
        tags=["rlhf", "trl", "pipeline", stage, *(["lora"] if is_adapter(run_dir) else [])],
    )
    loader = (
        ("peft", "AutoPeftModelForSequenceClassification" if reward_model else "AutoPeftModelForCausalLM")
        if adapter
        else ("transformers", "AutoModelForSequenceClassification" if reward_model else "AutoModelForCausalLM")
    )
    chain = " -> ".join(f"{STAGE_TITLES.get(s, s)} (`{f}`)" for s, f in stages)
    numbers = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    lines = [
        f"# {repo_id}",
        "",
        f"A {STAGE_TITLES.get(stage, stage)} {'LoRA adapter' if adapter else 'model'} trained with the "
        "`pipeline` project (InstructGPT's recipe: SFT -> reward model -> PPO on the Hugging Face stack)"
        + (", merged into its base weights." if merged else "."),
        "",
        "## Stage chain",
        "",
        chain,
        "",
    ]
    if recipe.get("reward_model_path"):
        lines += [f"Reward model: `{recipe['reward_model_path']}`.", ""]
    if hub_base is None:
        lines += ["The chain does not start from a Hub model, so `base_model` is not set.", ""]
    lines += ["## How to load", "", "```python", f"from {loader[0]} import {loader[1]}", ""]
    lines += [f'model = {loader[1]}.from_pretrained("{repo_id}")', "```", ""]
    if numbers:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in numbers]
        lines.append("")
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))


def build_upload(run_dir: Path, folder: Path, repo_id: str, merged: bool, license_id: str) -> list[str]:
    """Fill `folder` with exactly what would be uploaded; the sorted file list."""
    if merged:
        merge_into(run_dir, folder)
    else:
        for pattern in UPLOAD_PATTERNS:
            for path in run_dir.glob(pattern):
                if path.is_file():
                    shutil.copy2(path, folder / path.name)
    _check_finite(folder)
    model_card(run_dir, repo_id, merged, license_id).save(folder / "README.md")
    return sorted(p.name for p in folder.iterdir() if p.name != outputs.OWN_MARKER)  # a dry run's, until it ends


def _check_finite(folder: Path) -> None:
    """Refuse to publish weights holding a NaN or an inf, as the stages refuse to write them."""
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as weights:
            bad = next((k for k in weights.keys() if not torch.isfinite(weights.get_tensor(k)).all()), None)  # noqa: SIM118
        if bad is not None:
            raise PipelineError(f"{path.name} holds a weight that is not finite (NaN or inf), {bad}: nothing is pushed")


def _unreachable(error: Exception) -> bool:
    """Whether `error` says the Hub could not be reached: offline mode, or the HTTP client's transport errors."""
    return isinstance(error, OSError) or any(cls.__name__ == "TransportError" for cls in type(error).__mro__)


def push(
    run_dir: str | Path,
    repo_id: str,
    private: bool = False,
    merged: bool = False,
    dry_run: str | Path | None = None,
    license_id: str = "other",
    commit_message: str | None = None,
    api: HfApi | None = None,
) -> list[str]:
    """Upload a stage's output (adapter by default, or merged) with its card; with `dry_run`, only write it there."""
    run_dir = Path(run_dir)
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PipelineError(f"--repo_id must be USER/NAME or ORG/NAME, got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PipelineError(f"--repo_id {repo_id!r}: {error}") from None
    _check_run(run_dir, merged)
    if dry_run is not None:
        target = Path(dry_run)
        if target.exists() and any(target.iterdir()):
            raise PipelineError(f"--dry_run folder {target} exists and is not empty")
        with _building(target, [run_dir]) as work:
            files = build_upload(run_dir, work, repo_id, merged, license_id)
        (target / outputs.OWN_MARKER).unlink()  # the folder is exactly the upload
        print(f"dry run: {target} holds what would go to {repo_id} ({'private' if private else 'public'}):")
        print("\n".join(f"  {name}" for name in files))
        return files
    token = get_token()
    if token is None:
        raise PipelineError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = api or HfApi()
    stage = outputs.read_recipe_file(run_dir).get("stage", "model")
    with tempfile.TemporaryDirectory() as tmp:
        files = build_upload(run_dir, Path(tmp), repo_id, merged, license_id)
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                commit_message=commit_message or f"Upload {stage} from pipeline",
                token=token,
            )
        except Exception as error:
            if not _unreachable(error):
                raise
            raise PipelineError(
                f"could not reach the Hub to push {run_dir} ({type(error).__name__}): check the connection "
                "(HF_HUB_OFFLINE unset?) and push again; --dry_run DIR writes the folder without uploading"
            ) from error
    print(f"pushed {len(files)} files to {url}")
    return files
