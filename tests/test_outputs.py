import yaml

from pipeline import outputs


def test_start_resumes_only_the_same_recipe(tmp_path):
    out = tmp_path / "sft"
    work, resume = outputs.start(out, "sft", {"learning_rate": 1e-3, "hub_token": "hf_secret"})
    assert work == tmp_path / "sft.partial" and not resume
    assert "hf_secret" not in (work / "recipe.yaml").read_text()
    (work / "checkpoint-10").mkdir()
    assert outputs.start(out, "sft", {"learning_rate": 1e-3, "hub_token": "hf_other"}) == (work, True)
    work, resume = outputs.start(out, "sft", {"learning_rate": 2e-3})
    assert not resume and not (work / "checkpoint-10").exists()
    assert yaml.safe_load((work / "recipe.yaml").read_text()) == {"stage": "sft", "learning_rate": 2e-3}


def test_finish_replaces_the_old_output_atomically(tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "old.txt").write_text("old")
    work, _ = outputs.start(out, "sft", {})
    (work / "checkpoint-5").mkdir()
    outputs.write_metrics(work, {"train_loss": 1.0})
    outputs.finish(work, out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "recipe.yaml"]
    assert not work.exists() and not (tmp_path / "sft.old").exists()
