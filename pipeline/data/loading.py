"""Load a data card's split as a canonical `datasets.Dataset`, counting every row it drops."""

from __future__ import annotations

import glob
import gzip
import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from pipeline.data.cards import REPO_ROOT, DataCard, DataError, read_card
from pipeline.data.formats import CONVERTERS, Drop

logger = logging.getLogger(__name__)

_BUILDERS = {".json": "json", ".jsonl": "json", ".gz": "json", ".parquet": "parquet", ".csv": "csv"}


@dataclass
class LoadReport:
    card: str
    split: str
    format: str
    rows_in: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(self.dropped.items())) or "none"
        return f"{self.card} [{self.split}]: kept {self.rows_out} of {self.rows_in} rows; dropped: {reasons}"


def _builder(files: str) -> str:
    suffix = Path(files).suffix
    if suffix not in _BUILDERS:
        raise DataError(f"cannot tell the file type of {files}; use one of {sorted(_BUILDERS)}")
    return _BUILDERS[suffix]


def _first_bad_json_line(files: str) -> str | None:
    """Where a JSON-lines file first fails to parse, as `path:line: reason`; None when every line parses."""
    for path in sorted(glob.glob(files)) if any(ch in files for ch in "*?[") else [files]:
        opener = gzip.open if path.endswith(".gz") else open
        number = 0
        try:
            # bytes, so that a line that is not UTF-8 is named; a byte-order mark at the start is no error
            with opener(path, "rb") as f:
                for number, raw in enumerate(f, 1):
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                    if line.strip():
                        json.loads(line)
        except json.JSONDecodeError as error:
            return f"{path}:{number}: not valid JSON ({error.msg}, column {error.colno})"
        except UnicodeDecodeError as error:
            return f"{path}:{number}: not UTF-8 text (byte {error.object[error.start]:#04x} at column {error.start + 1})"
        except (OSError, EOFError, zlib.error) as error:
            return f"{path}: cannot be read ({error})"
    return None


def _load_local(files: str, split: str = "train") -> datasets.Dataset:
    matched = sorted(glob.glob(files)) if any(ch in files for ch in "*?[") else [files]
    if not matched:
        raise DataError(f"no file matches {files}")
    if not Path(matched[0]).exists():
        raise DataError(f"data file not found: {files}")
    if all(Path(path).is_file() and Path(path).stat().st_size == 0 for path in matched):
        raise DataError(f"{files}: the file is empty")
    try:
        return datasets.load_dataset(_builder(files), data_files=files, split=split)
    except (
        ValueError,
        OSError,
        EOFError,
        StopIteration,
        zlib.error,
        datasets.exceptions.DatasetGenerationError,
    ) as error:
        where = _first_bad_json_line(files) if files.endswith((".jsonl", ".gz")) else None
        raise DataError(where or f"{files}: cannot be read as {_builder(files)} ({error})") from error


def _local_path(card: DataCard, split: str) -> Path:
    """Where a card's local split is, made first where the card's generator makes it."""
    path = REPO_ROOT / card.local[split]
    if card.generator == "sandbox":
        from pipeline.sandbox import ensure_sandbox_data

        ensure_sandbox_data(path.parent)
    return path


def local_files(card: DataCard) -> list[Path]:
    """Every file a card's local source names."""
    return [Path(file) for split in card.local for file in sorted(glob.glob(str(_local_path(card, split))))]


def raw_split(card: DataCard, split: str, data_files: str | None) -> datasets.Dataset:
    if data_files:
        # One file is one split; a sliced split name (`train[:200]`, `train[90%:]`) takes part of it.
        return _load_local(data_files, split if "[" in split else "train")
    if card.local:
        if split not in card.local:
            raise DataError(f"{card.path}: no split {split!r}; the card has {card.split_names}")
        return _load_local(str(_local_path(card, split)))
    if card.splits and split not in card.splits:
        raise DataError(f"{card.path}: no split {split!r}; the card has {card.split_names}")
    try:
        return datasets.load_dataset(
            card.hub,
            name=card.config,
            data_dir=card.data_dir,
            revision=card.revision,
            split=card.splits.get(split, split),
        )
    except Exception as error:  # offline, gated, missing: one clear line either way
        raise DataError(
            f"could not load {card.hub} [{split}] from the Hub ({type(error).__name__}); "
            f"to use local files in the same format, pass --data_files PATH"
        ) from error


def load_card(
    card_path: str | Path, split: str = "train", data_files: str | None = None, max_rows: int | None = None
) -> tuple[datasets.Dataset, LoadReport]:
    """The split of a card in its canonical format, and what was kept and dropped (also logged)."""
    card = read_card(card_path)
    raw = raw_split(card, split, data_files)
    if max_rows is not None:
        raw = raw.select(range(min(max_rows, len(raw))))
    convert, canonical = CONVERTERS[card.format]
    renames = {source: target for target, source in card.columns.items()}
    missing = sorted(set(renames) - set(raw.column_names))
    if missing:
        raise DataError(f"{card.path}: column {missing[0]!r} (from the card's columns) is not in the data")
    report = LoadReport(card=card.name, split=split, format=canonical, rows_in=len(raw))
    dropped: Counter[str] = Counter()
    rows = []
    for index, raw_row in enumerate(raw):
        row = {renames.get(k, k): v for k, v in raw_row.items()}
        try:
            converted = convert(row)
        except Drop as reason:
            dropped[str(reason)] += 1
            continue
        if not isinstance(converted, list):
            rows.append(converted)
            continue
        for item in converted:  # an expanded row: its rows keep a group, the raw row's index
            if isinstance(item, Drop):
                dropped[str(item)] += 1
            else:
                rows.append({**item, "group": index})
    report.rows_out, report.dropped = len(rows), dict(dropped)
    if not rows:
        raise DataError(f"{report.summary()}: nothing left to use")
    logger.info(report.summary())
    _require_one_kind(rows, card.path, split)
    return datasets.Dataset.from_list(rows), report


def _require_one_kind(rows: list[dict], where: Path, split: str) -> None:
    """Every row holds the same kind in each column: conversations (lists of messages) or plain text, not both."""
    first = {key: isinstance(value, list) for key, value in rows[0].items()}
    for number, row in enumerate(rows[1:], 2):
        for key, value in row.items():
            if key in first and value is not None and isinstance(value, list) != first[key]:
                kinds = ("messages", "text") if first[key] else ("text", "messages")
                raise DataError(
                    f"{where} [{split}]: usable row {number} has {kinds[1]} in {key!r} where row 1 has {kinds[0]}: "
                    "a dataset holds one kind, conversations or plain text"
                )
