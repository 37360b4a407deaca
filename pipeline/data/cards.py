"""Data cards: `data_cards/<name>.md`, YAML front matter for the loader, prose for people.

Front matter keys:
  name, license, citation      what it is (citation optional)
  format                       raw format, a key of formats.CONVERTERS
  source.hub                   Hub dataset id, with optional source.config / source.data_dir / source.revision
  source.local                 or local files: split -> path or glob (relative to the repository root)
  source.generator             `sandbox`: local files are generated when missing
  splits                       canonical split -> Hub split name (Hub sources)
  columns                      canonical column -> source column, where they differ
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline import reading
from pipeline.errors import PipelineError
from pipeline.data.formats import CONVERTERS

REPO_ROOT = Path(__file__).resolve().parents[2]


class DataError(PipelineError):
    pass


@dataclass(frozen=True)
class DataCard:
    path: Path
    name: str
    format: str
    license: str
    hub: str | None = None
    config: str | None = None
    data_dir: str | None = None
    revision: str | None = None
    local: dict[str, str] = field(default_factory=dict)
    generator: str | None = None
    splits: dict[str, str] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    citation: str | None = None

    @property
    def split_names(self) -> list[str]:
        return list(self.local or self.splits)


def _front_matter(path: Path) -> dict:
    text = reading.read_text(path)
    if not text.startswith("---\n"):
        raise DataError(f"{path}: a data card starts with YAML front matter between '---' lines")
    head, sep, _ = text[4:].partition("\n---")
    if not sep:
        raise DataError(f"{path}: front matter is not closed by a '---' line")
    meta = reading.parse_yaml(head, f"{path} (front matter)") or {}
    if not isinstance(meta, dict) or not all(isinstance(key, str) for key in meta):
        raise DataError(f"{path}: front matter must be a mapping of key: value")
    return meta


def _mapping(meta: dict, key: str, path: Path) -> dict[str, str]:
    """A front matter mapping of names to text (`source.local`, `splits`, `columns`), empty when absent."""
    value = meta.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise DataError(f"{path}: {key} must map names to text (name: value, one per line)")
    return value


def read_card(path: str | Path) -> DataCard:
    """Parse and validate one data card."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data card not found: {path}")
    meta = _front_matter(path)
    for key in ("name", "format", "license", "source"):
        if key not in meta:
            raise DataError(f"{path}: front matter lacks {key!r}")
    if meta["format"] not in CONVERTERS:
        raise DataError(f"{path}: format {meta['format']!r} is not one of {sorted(CONVERTERS)}")
    source = meta["source"]
    if not isinstance(source, dict) or ("hub" in source) == ("local" in source):
        raise DataError(f"{path}: source needs exactly one of 'hub' or 'local'")
    if meta["license"] is None or not str(meta["license"]).strip():
        raise DataError(f"{path}: license is empty: name the data's licence (mit, cc-by-4.0, other, ...)")
    unknown = set(meta) - {"name", "format", "license", "source", "splits", "columns", "citation"}
    if unknown:
        raise DataError(f"{path}: unknown front matter key {sorted(unknown)[0]!r}")
    return DataCard(
        path=path,
        name=meta["name"],
        format=meta["format"],
        license=str(meta["license"]),
        hub=source.get("hub"),
        config=source.get("config"),
        data_dir=source.get("data_dir"),
        revision=source.get("revision"),
        local=_mapping(source, "local", path),
        generator=source.get("generator"),
        splits=_mapping(meta, "splits", path),
        columns=_mapping(meta, "columns", path),
        citation=meta.get("citation"),
    )
