import yaml

from pipeline import outputs


def test_a_checkpoint_counts_only_with_its_trainer_state(tmp_path):
    for step, state in ((10, "trainer_state.json"), (20, "trainer_state.pt"), (30, None), (40, "trainer_state.json")):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "model.safetensors").write_text("weights")
        if state:
            (folder / state).write_text('{"global_step": 1}')
    (tmp_path / "checkpoint-40" / "trainer_state.json").write_text('{"global_st')  # killed while it was written
    (tmp_path / "tmp-checkpoint-50").mkdir()  # PPO's name for a checkpoint being written
    assert outputs.last_checkpoint(tmp_path) == (20, tmp_path / "checkpoint-20")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20"]


def test_start_resumes_only_the_same_recipe(tmp_path):
    out = tmp_path / "sft"
    work, resume = outputs.start(out, "sft", {"learning_rate": 1e-3, "hub_token": "hf_secret"}, [])
    assert work == tmp_path / "sft.partial" and not resume
    assert "hf_secret" not in (work / "recipe.yaml").read_text()
    (work / "checkpoint-10").mkdir()
    (work / "checkpoint-10" / "trainer_state.json").write_text("{}")
    assert outputs.start(out, "sft", {"learning_rate": 1e-3, "hub_token": "hf_other"}, []) == (work, True)
    work, resume = outputs.start(out, "sft", {"learning_rate": 2e-3}, [])
    assert not resume and not (work / "checkpoint-10").exists()
    assert yaml.safe_load((work / "recipe.yaml").read_text()) == {"stage": "sft", "learning_rate": 2e-3}


def test_finish_replaces_the_old_output_atomically(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "recipe.yaml").write_text("stage: sft\n")  # a finished output of an earlier run
    (out / "metrics.json").write_text("{}")
    work, _ = outputs.start(out, "sft", {}, [])
    (work / "checkpoint-5").mkdir()
    outputs.write_metrics(work, {"train_loss": 1.0})
    outputs.finish(work, out)
    assert sorted(p.name for p in out.iterdir()) == [outputs.OWN_MARKER, "inputs.json", "metrics.json", "recipe.yaml"]
    assert not work.exists() and not (tmp_path / "sft.old").exists()
