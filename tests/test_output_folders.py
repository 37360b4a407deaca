"""An output folder is the run's own: what a run did not make is never deleted, moved or overwritten.

Each case is refused before any work, with one `error:` line and exit 2, and leaves what was there as it was.
"""

import socket
import subprocess

import pytest

from pipeline import locks, outputs
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.inputs import recipe_paths
from tests.conftest import SMOKE, ppo_args, stage_args
from tests.test_bad_inputs import refused


def sft_args(runs, output_dir, **overrides):
    base = overrides.pop("model_name_or_path", runs / "base")
    return stage_args(
        "sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=base, output_dir=output_dir, **overrides
    )


def snapshot(folder):
    return sorted((p.relative_to(folder), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


def test_a_project_checkout_is_refused_and_kept_whole(runs, tmp_path, capsys):
    checkout = tmp_path / "project"
    checkout.mkdir()
    subprocess.run(["git", "init", "-q", str(checkout)], check=True)
    (checkout / "notes.txt").write_text("uncommitted work")
    before = snapshot(checkout)
    refused(sft_args(runs, checkout), capsys, str(checkout), "git repository")
    assert snapshot(checkout) == before and not outputs.partial_dir(checkout).exists()


def test_a_folder_of_someone_elses_files_is_refused(runs, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    refused(sft_args(runs, folder), capsys, str(folder), "not a finished output")
    assert (folder / "cat.jpg").read_bytes() == b"\xff\xd8"


def test_an_existing_file_is_refused_and_not_moved(runs, tmp_path, capsys):
    target = tmp_path / "model.bin"
    target.write_text("keep me")
    refused(sft_args(runs, target), capsys, str(target), "existing file")
    assert target.read_text() == "keep me" and not target.with_name("model.bin.old").exists()


@pytest.mark.parametrize("where", [".", "/"])
def test_the_working_directory_and_the_root_are_refused(runs, where, capsys):
    refused(sft_args(runs, where), capsys, "working directory or a folder above it")


def test_a_stage_never_writes_over_its_own_input(runs, models, tmp_path, capsys):
    sft, rm = models
    before = snapshot(sft)
    refused(sft_args(runs, sft, model_name_or_path=sft), capsys, f"output_dir {sft} is the run's input")
    refused(ppo_args(models, sft), capsys, "is the run's input")
    refused(ppo_args(models, rm), capsys, "is the run's input")
    refused(ppo_args(models, sft / "ppo"), capsys, "is inside the run's input")
    refused(ppo_args(models, sft.parent), capsys, "contains the run's input")
    evaluate = ["eval", "--policies", f"sft={sft}", "--num_prompts", "2", "--output_dir", sft]
    refused(evaluate, capsys, "is the run's input")
    assert snapshot(sft) == before


def test_a_data_file_is_an_input_too(runs, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "rows.jsonl").write_text("{}\n")
    refused(sft_args(runs, data, data_files=data / "rows.jsonl"), capsys, "contains the run's input")


def test_finish_replaces_only_a_finished_output(tmp_path):
    work, target = tmp_path / "run.partial", tmp_path / "run"
    work.mkdir()
    (work / "model.safetensors").write_text("new")
    target.mkdir()
    (target / "thesis.tex").write_text("mine")
    with pytest.raises(PipelineError, match="not a finished output of this pipeline: it is kept"):
        outputs.finish(work, target)
    assert (target / "thesis.tex").read_text() == "mine" and (work / "model.safetensors").is_file()
    (target / "thesis.tex").unlink()
    (target / outputs.RECIPE_FILE).write_text("stage: sft\n")
    (target / outputs.METRICS_FILE).write_text("{}")
    outputs.finish(work, target)
    assert (target / "model.safetensors").read_text() == "new" and not work.exists()


@pytest.mark.parametrize("through", ["data_files", "dataset_card"])
def test_a_run_resumes_only_when_its_data_files_hold_what_they_held(through, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a"}\n')
    card = tmp_path / "card.md"  # the recipe names the card; the card names the file
    card.write_text(f"---\nname: x\nformat: text\nlicense: mit\nsource:\n  local:\n    train: {rows}\n---\n")
    out, recipe = tmp_path / "run", {through: str(rows if through == "data_files" else card), "seed": 0}
    assert rows in recipe_paths(recipe)

    def start() -> bool:
        work, resume = outputs.start(out, "sft", recipe, recipe_paths(recipe))
        locks.release(out)
        return resume

    assert not start()
    checkpoint = outputs.partial_dir(out) / "checkpoint-1"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text("{}")
    assert start()  # the same recipe and the same data: resumed
    rows.write_text('{"text": "b"}\n')
    assert not start() and not checkpoint.exists()  # edited data: started again


def test_someone_elses_partial_and_old_folders_are_kept(runs, tmp_path, capsys):
    out = tmp_path / "run"
    partial, old = outputs.partial_dir(out), out.with_name("run.old")
    partial.mkdir()
    (partial / "draft.txt").write_text("mine")
    refused(sft_args(runs, out), capsys, str(partial), "not made by this pipeline")
    assert (partial / "draft.txt").read_text() == "mine" and not locks.lock_path(out).exists()
    (partial / "draft.txt").rename(tmp_path / "draft.txt")
    partial.rmdir()
    old.mkdir()
    (old / "draft.txt").write_text("mine")
    refused(sft_args(runs, out), capsys, str(old), "not made by this pipeline")  # before training, not after it
    assert (old / "draft.txt").read_text() == "mine" and not partial.exists()
    # finish: an `.old` beside a finished output is moved aside only when the pipeline made it
    work = outputs.make_own(tmp_path / "next.partial")
    target = tmp_path / "next"
    target.mkdir()
    (target / outputs.RECIPE_FILE).write_text("stage: sft\n")
    (target / outputs.METRICS_FILE).write_text("{}")
    old = target.with_name("next.old")
    old.mkdir()
    (old / "draft.txt").write_text("mine")
    with pytest.raises(PipelineError, match=f"not made by this pipeline.*the run's output is in {work}"):
        outputs.finish(work, target)
    assert (old / "draft.txt").read_text() == "mine" and (target / outputs.METRICS_FILE).is_file() and work.is_dir()
    (old / "draft.txt").unlink()
    (old / outputs.OWN_MARKER).write_text("")  # an interrupted swap's own
    outputs.finish(work, target)
    assert not old.exists() and (target / outputs.OWN_MARKER).is_file()
    assert not list(tmp_path.glob("*.deleting-*"))


def test_push_dry_run_keeps_someone_elses_partial(runs, tmp_path, capsys):
    # merge builds its folder the same way (hub._building)
    partial = tmp_path / "upload.partial"
    partial.mkdir()
    (partial / "draft.txt").write_text("mine")
    dry_run = ["push", runs / "sft", "--repo_id", "someone/x", "--dry_run", tmp_path / "upload"]
    refused(dry_run, capsys, str(partial), "not made by")
    assert (partial / "draft.txt").read_text() == "mine"


def test_a_forced_rerun_leaves_a_live_runs_folder_alone(tmp_path):
    out = tmp_path / "run"
    partial = outputs.make_own(outputs.partial_dir(out))
    (partial / "checkpoint-1").mkdir()
    writer = subprocess.Popen(["sleep", "60"])
    try:
        locks.lock_path(out).write_text(f"{socket.gethostname()}:{writer.pid}\n")
        with pytest.raises(PipelineError, match="being written by another run"):
            outputs.discard_unfinished(out)
        assert (partial / "checkpoint-1").is_dir()
    finally:
        writer.kill()
        writer.wait()
    outputs.discard_unfinished(out)  # its writer gone: the lock is taken over, the folder removed
    assert not partial.exists() and not locks.lock_path(out).exists()


def test_data_writes_only_into_a_folder_of_its_own(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.jsonl").write_text("my rows\n")
    card = ["data", "data_cards/sandbox_sft.md", "--max_rows", "3", "--output_dir"]
    refused([*card, mine], capsys, str(mine), "did not write")
    assert (mine / "train.jsonl").read_text() == "my rows\n"
    rows = mine / "train.jsonl"
    refused(["data", "data_cards/sandbox_sft.md", "--data_files", rows, "--output_dir", mine], capsys, "input")
    stage_output = outputs.make_own(tmp_path / "sft")  # a stage's folder carries the marker too: not data's
    (stage_output / outputs.RECIPE_FILE).write_text("stage: sft\n")
    refused([*card, stage_output], capsys, "did not write")
    ours = tmp_path / "ours"
    for split in ("train", "validation"):
        assert main([*card, str(ours), "--split", split]) == 0
    assert len((ours / "train.jsonl").read_text().splitlines()) == 3 and (ours / "validation.jsonl").is_file()


def test_a_symbolic_link_is_refused_and_what_it_points_to_kept(runs, tmp_path, capsys):
    link = tmp_path / "latest"
    link.symlink_to(runs / "sft")
    before = snapshot(runs / "sft")
    refused(sft_args(runs, link), capsys, str(link), "symbolic link")
    assert link.is_symlink() and snapshot(runs / "sft") == before
