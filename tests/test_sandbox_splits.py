import json
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from pipeline import sandbox as sb
from pipeline.errors import PipelineError
from pipeline.sandbox import FAMILIES, SPLITS, ensure_sandbox_data, parse_prompt
from pipeline.sandbox.corpus import demo_styles, demonstrations, prompt_rows
from pipeline.sandbox.evaluation import balanced_indices
from pipeline.sandbox.files import DATA_VERSION
from pipeline.sandbox.tasks import split_of, tasks
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    return ensure_sandbox_data(tmp_path_factory.mktemp("sandbox") / "data")


def test_at_least_six_families_with_required_templates():
    assert len(FAMILIES) >= 6
    assert parse_prompt("Reverse the word tree.").answer == "eert"
    assert parse_prompt("Add 40 and 5.").answer == "45"
    assert sum(f.check_easy for f in FAMILIES.values()) >= 2


def test_splits_are_deterministic_and_disjoint():
    # the same in a fresh process, whatever its string-hash seed (a split must not come from hash())
    script = "from pipeline.sandbox.tasks import split_of; print(split_of('add', (3, 4)))"
    fresh = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    assert fresh.stdout.strip() == split_of("add", (3, 4))
    for family in FAMILIES:
        seen = [set(t.item for t in tasks(s, family)) for s in SPLITS]
        assert sum(map(len, seen)) == len(set().union(*seen))
        assert all(seen), f"{family} has an empty split"


def test_test_prompts_balanced_and_stable():
    prompts = sb.test_prompts(210)
    assert prompts == sb.test_prompts(210) and len(set(prompts)) == 210
    counts = Counter(parse_prompt(p).family for p in prompts)
    assert set(counts) == set(FAMILIES) and max(counts.values()) - min(counts.values()) <= 1
    with pytest.raises(ValueError, match="test split has"):
        sb.test_prompts(10**6)


def test_no_test_prompt_or_answer_in_training_data(sandbox):
    test = [t for f in FAMILIES for t in tasks("test", f)]
    pretraining = (sandbox / "pretrain_train.jsonl").read_text()
    sft = (sandbox / "sft_train.jsonl").read_text()
    for task in test:
        assert task.prompt not in pretraining and task.prompt not in sft
    # nor is a test item's answer stated as a fact
    reversed_words = set(re.findall(r"\b([a-z]+) spelled backwards|reverse of ([a-z]+) is", pretraining))
    assert not {(t.item[0], "") for t in tasks("test", "reverse")} & reversed_words
    assert not {("", t.item[0]) for t in tasks("test", "reverse")} & reversed_words
    sums = set(re.findall(r"\b(\d+) (?:plus|\+) (\d+) ", pretraining))
    assert not {(str(a), str(b)) for a, b in (t.item for t in tasks("test", "add"))} & sums


def test_demonstrations_mix_styles_as_documented():
    rows = demonstrations("sft", 1000)
    for family in FAMILIES:
        styles = Counter(r["style"] for r in rows if r["family"] == family)
        for style, share in demo_styles(family).items():
            assert styles[style] / 1000 == pytest.approx(share, abs=0.04), (family, style)
    filler = sum(r["style"] == "filler" for r in rows) / len(rows)
    assert 1 / 3 <= filler <= 1 / 2  # a third to a half of the demonstrations carry filler


def test_generated_files_are_complete_and_versioned(sandbox):
    assert (sandbox / "VERSION").exists()
    first = json.loads((sandbox / "sft_train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["user", "assistant"]
    assert ensure_sandbox_data(sandbox) == sandbox  # up to date: nothing regenerated


def test_generating_never_deletes_what_the_sandbox_did_not_make(sandbox, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "train.jsonl").write_text("mine\n")
    with pytest.raises(PipelineError, match="did not make"):
        ensure_sandbox_data(theirs)
    assert (theirs / "train.jsonl").read_text() == "mine\n"
    # an older version of the sandbox's own folder is brought up to date around a file someone added
    stale = shutil.copytree(sandbox, tmp_path / "stale")
    (stale / "VERSION").write_text("0\n")
    (stale / "sft_train.jsonl").write_text("old\n")
    (stale / "notes.txt").write_text("mine\n")
    ensure_sandbox_data(stale)
    assert (stale / "sft_train.jsonl").read_text() == (sandbox / "sft_train.jsonl").read_text()
    assert (stale / "notes.txt").read_text() == "mine\n" and (stale / "VERSION").read_text() == DATA_VERSION + "\n"
    assert not list(tmp_path.glob("*.partial-*"))


def test_balanced_indices_give_every_family_as_many_prompts_as_the_largest():
    rows = prompt_rows("ppo")
    counts = Counter(parse_prompt(r["prompt"][-1]["content"]).family for r in rows)
    assert max(counts.values()) > 5 * min(counts.values())  # the split itself is uneven
    picked = balanced_indices([r["prompt"] for r in rows])
    balanced = Counter(parse_prompt(rows[i]["prompt"][-1]["content"]).family for i in picked)
    assert set(balanced.values()) == {max(counts.values())} and len(balanced) == len(counts)
    assert set(picked) == set(range(len(rows)))  # every prompt is kept; small families recur
