"""Reading the text, YAML and JSON files a user hands us (recipes, cards, chains, model and output folders):
each failure is one `PipelineError` line that names the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import PipelineError

# A recipe or card holds tens of values; aliases nested in aliases can make a few lines stand for billions,
# which code that walks the result (the recipe's input paths, the resume fingerprint) would visit one by one
MAX_YAML_VALUES = 100_000


def read_text(path: str | Path) -> str:
    """A file's text, which must be UTF-8."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise PipelineError(
            f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}): save it as UTF-8"
        ) from error
    except OSError as error:
        raise PipelineError(f"cannot read {path}: {error.strerror or error}") from error


def check_expansion(value: Any, path: str | Path) -> Any:
    """`value`, refused when its aliases expand it past `MAX_YAML_VALUES` values."""
    count, stack = 0, [value]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise PipelineError(f"{path}: its YAML aliases expand it past {MAX_YAML_VALUES:,} values: refused")
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value


def parse_yaml(text: str, path: str | Path, loader: type[yaml.SafeLoader] = yaml.SafeLoader) -> Any:
    """YAML text from `path` (named in errors), loaded safely and bounded in size."""
    try:
        parser = loader(text)
        parser.name = str(path)  # for the line marks in its errors
        try:
            value = parser.get_single_data()
        finally:
            parser.dispose()
    except yaml.YAMLError as error:
        raise PipelineError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from error
    return check_expansion(value, path)


def read_yaml(path: str | Path) -> Any:
    return parse_yaml(read_text(path), path)


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(read_text(path))
    except ValueError as error:
        raise PipelineError(f"{path}: not valid JSON ({error})") from error


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file that must hold an object (a model's `config.json`, an output's `metrics.json`)."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise PipelineError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value
