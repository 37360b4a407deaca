import json
from pathlib import Path

import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "sandbox"


def metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """base -> SFT on the smoke recipes (about 30 s on 2 cores), shared by every stage test."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["base", "--config", str(SMOKE / "base/config_smoke.yaml"), "--output_dir", str(out / "base")]) == 0
    sft = ["sft", "--config", str(SMOKE / "sft/config_smoke.yaml"), "--model_name_or_path", str(out / "base")]
    assert main([*sft, "--output_dir", str(out / "sft")]) == 0
    return out
