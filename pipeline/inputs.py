"""What a run reads: the files and folders its recipe names, and the data files its cards name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data import read_card
from pipeline.data.loading import local_files


def recipe_paths(recipe: dict[str, Any]) -> list[Path]:
    """The existing files and folders a recipe names (models, adapters, data files, cards) and the local files its
    data cards name: the run's inputs."""
    found: list[Path] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item)
        elif isinstance(value, str | Path) and str(value):
            for part in str(value).split(","):  # data_files may list several
                if part and Path(part).exists():
                    found.append(Path(part))

    visit({k: v for k, v in recipe.items() if k != "output_dir"})
    for key, value in recipe.items():
        if key.endswith("_card") and isinstance(value, str) and Path(value).is_file():
            found += local_files(read_card(value))
    return [path for path in dict.fromkeys(found) if path.exists()]
