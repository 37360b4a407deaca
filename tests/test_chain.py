"""The demo chain: fingerprints, skipping current stages, the wiring of the demo recipes."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline import chain, outputs
from pipeline.cli import main
from pipeline.errors import PipelineError
from tests.conftest import ROOT, metrics


def _finished(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(values))
    return folder


def test_fingerprint_follows_arguments_recipe_text_named_files_and_input_metrics(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 1.0e-3\n")
    upstream = _finished(tmp_path / "up", loss=1.0)
    step = chain.Step("s", ("sft", "--config", str(recipe)), tmp_path / "out", (upstream,))
    first = chain.fingerprint(step)
    assert chain.fingerprint(step) == first
    assert chain.fingerprint(chain.Step("s", (*step.argv, "--seed", "1"), step.output, step.inputs)) != first
    recipe.write_text("learning_rate: 2.0e-3\n")
    second = chain.fingerprint(step)
    assert second != first
    _finished(upstream, loss=0.9)  # the upstream stage ran again
    third = chain.fingerprint(step)
    assert third != second
    template = tmp_path / "chat.jinja"  # a file the recipe names: its text counts, as the recipe's does
    template.write_text("{{ messages }}")
    recipe.write_text(f"learning_rate: 2.0e-3\nchat_template_path: {template}\n")
    fourth = chain.fingerprint(step)
    template.write_text("{{ messages[-1] }}")
    assert chain.fingerprint(step) != fourth != third


def test_a_step_is_current_only_with_its_record_and_unchanged_inputs(tmp_path):
    upstream = _finished(tmp_path / "up", loss=1.0)
    step = chain.Step("s", ("eval",), tmp_path / "out", (upstream,))
    assert not chain.is_current(step)
    _finished(step.output)
    assert not chain.is_current(step)  # output without a record: made outside the chain
    (step.output / outputs.CHAIN_FILE).write_text(json.dumps({"fingerprint": chain.fingerprint(step), "seconds": 1}))
    assert chain.is_current(step)
    _finished(upstream, loss=0.5)
    assert not chain.is_current(step)


def test_missing_input_is_named():
    step = chain.Step("rm", ("rm",), Path("nowhere/rm"), (Path("nowhere/sft"),))
    with pytest.raises(PipelineError, match="stage rm needs nowhere/sft"):
        chain.fingerprint(step)


def test_until_runs_a_stage_and_only_what_it_reads():
    steps = chain.load("sandbox").steps
    assert [s.name for s in chain.needed_for(steps, "ppo-ptx")] == ["base", "sft", "label", "rm", "ppo-ptx"]
    assert [s.name for s in chain.needed_for(steps, "sft")] == ["base", "sft"]
    assert [s.name for s in chain.needed_for(steps, "rloo")] == ["base", "sft", "label", "rm", "rloo"]
    assert [s.name for s in chain.needed_for(steps, "dpo")] == ["base", "sft", "label", "dpo"]  # no RM
    assert [s.name for s in chain.needed_for(steps, "eval")] == [s.name for s in steps if s.in_whole_chain]
    with pytest.raises(PipelineError, match="no stage 'kto'"):
        chain.needed_for(steps, "kto")


def test_needs_runs_what_a_recipe_reads_from_its_path_keys_and_its_data_card():
    steps = chain.load("sandbox").steps
    assert [s.name for s in chain.needs("recipes/sandbox/rm/config_lora.yaml", steps)] == ["base", "sft", "label"]
    assert [s.name for s in chain.needs("recipes/sandbox/ppo/config_lora.yaml", steps)] == [
        "base",
        "sft",
        "label",
        "rm",
    ]
    assert chain.needs("recipes/qwen2.5-0.5b/sft/config_lora.yaml", steps) == []  # a Hub model: nothing to make
    smollm2_rm = "recipes/smollm2-135m/rm/config_demo.yaml"
    found = chain.chain_for(smollm2_rm)  # `make rm RECIPE=...` finds the chain that makes the recipe's inputs
    assert found.name == "smollm2"
    assert [s.name for s in chain.needs(smollm2_rm, found.steps)] == ["import", "sft", "merge", "label"]


def test_a_bad_chain_request_is_one_line(tmp_path, capsys):
    assert main(["demo", "--until", "sft", "--needs", "recipes/sandbox/rm/config_demo.yaml"]) == 2
    assert "demo takes --until or --needs, not both" in capsys.readouterr().err
    assert main(["demo", "--needs", "nowhere.yaml"]) == 2
    assert "recipe not found: nowhere.yaml" in capsys.readouterr().err
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "folder": "x", "steps": [{"command": ["eval", "{sft}"]}]}))
    with pytest.raises(PipelineError, match="eval names 'sft', no earlier step"):
        chain.read(path)
    path.write_text(yaml.safe_dump({"name": "t", "folder": "x", "steps": [{"command": ["import-gguf"]}]}))
    with pytest.raises(PipelineError, match="the import-gguf step needs --output_dir"):
        chain.read(path)


def _recipe(folder: Path, name: str, **keys) -> str:
    (folder / name).write_text(yaml.safe_dump(keys))
    return name


def test_a_chain_file_takes_each_steps_output_and_inputs_from_its_recipe_or_command(tmp_path):
    out = tmp_path / "out"
    card = tmp_path / "pairs.md"
    local = {"train": f"{out}/pairs/train.jsonl", "test": f"{out}/pairs/test.jsonl"}
    card.write_text(yaml.safe_dump({"name": "p", "format": "ranked", "license": "mit", "source": {"local": local}}))
    card.write_text("---\n" + card.read_text() + "---\n")
    steps = [
        {"stage": "sft", "recipe": _recipe(tmp_path, "sft.yaml", model_name_or_path="Org/m", output_dir=f"{out}/sft")},
        {"name": "merge", "command": ["merge", "{sft}", "--output_dir", f"{out}/merged"]},
        {
            "stage": "label",
            "recipe": _recipe(tmp_path, "label.yaml", model_name_or_path=f"{out}/merged", output_dir=f"{out}/pairs"),
        },
        {
            "stage": "rm",
            "recipe": _recipe(
                tmp_path, "rm.yaml", model_name_or_path=f"{out}/merged", dataset_card=str(card), output_dir=f"{out}/rm"
            ),
        },
        {
            "recipe": _recipe(tmp_path, "ppo.yaml", reward_model_path=f"{out}/rm", output_dir=f"{out}/ppo"),
            "stage": "ppo",
        },
        {"command": ["eval", "--output_dir", f"{out}/eval"], "policies": {"sft": "merge", "ppo": "ppo"}},
    ]
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "folder": str(out), "steps": steps}, sort_keys=False))
    found = {step.name: step for step in chain.read(path).steps}
    assert list(found) == ["sft", "merge", "label", "rm", "ppo", "eval"]
    assert found["sft"].argv == ("sft", "--config", str(tmp_path / "sft.yaml")) and found["sft"].inputs == ()
    assert found["merge"].argv == ("merge", f"{out}/sft", "--output_dir", f"{out}/merged")
    assert found["merge"].inputs == (out / "sft",) and found["merge"].output == out / "merged"
    assert found["rm"].inputs == (out / "merged", out / "pairs")  # the card's files lie in the label step's output
    assert found["ppo"].inputs == (out / "rm",)
    assert found["eval"].argv == (
        "eval",
        "--policies",
        f"sft={out}/merged",
        f"ppo={out}/ppo",
        "--output_dir",
        f"{out}/eval",
    )
    assert found["eval"].inputs == (out / "merged", out / "ppo")


def test_an_optional_stage_joins_the_chain_and_its_evaluation_once_it_has_run(tmp_path):
    def names(steps):
        return [s.name for s in steps if s.in_whole_chain]

    steps = [
        {"stage": "sft", "recipe": _recipe(tmp_path, "sft.yaml", output_dir=str(tmp_path / "sft"))},
        {
            "stage": "rloo",
            "recipe": _recipe(
                tmp_path, "rloo.yaml", model_name_or_path=str(tmp_path / "sft"), output_dir=str(tmp_path / "rloo")
            ),
            "optional": True,
        },
        {"command": ["eval", "--output_dir", str(tmp_path / "eval")], "policies": {"sft": "sft", "rloo": "rloo"}},
    ]
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "folder": str(tmp_path), "steps": steps}, sort_keys=False))
    before = chain.read(path).steps
    assert names(before) == ["sft", "eval"] and "rloo=" not in " ".join(before[-1].argv)
    _finished(tmp_path / "rloo", gold_mean=0.8)
    after = chain.read(path).steps
    assert names(after) == ["sft", "rloo", "eval"]
    assert f"rloo={tmp_path / 'rloo'}" in after[-1].argv and tmp_path / "rloo" in after[-1].inputs


def test_the_smollm2_chains_merge_their_sft_adapter_and_evaluate_sft_and_ppo():
    steps = {step.name: step for step in chain.load("smollm2").steps}
    assert [s.name for s in chain.needed_for(list(steps.values()), "rm")] == ["import", "sft", "merge", "label", "rm"]
    assert steps["merge"].argv == ("merge", "outputs/smollm2/sft", "--output_dir", "outputs/smollm2/sft_merged")
    evaluate = steps["eval"].argv
    policies = evaluate[evaluate.index("--policies") + 1 : evaluate.index("--reward_model")]
    assert policies[:2] == ("sft=outputs/smollm2/sft_merged", "ppo=outputs/smollm2/ppo")
    # an optional step (PPO-ptx, DPO, GRPO) joins the evaluation once it has run
    joined = {policy.split("=", 1)[1] for policy in policies[2:]}
    assert joined == {str(s.output) for s in steps.values() if s.optional and _done(s)}
    assert evaluate[evaluate.index("--best_of_n") + 1] == "16"
    assert steps["ppo-ptx"].optional  # unlike the sandbox demo's
    hh = chain.load("smollm2-hh")
    assert [s.name for s in hh.steps] == ["import", "sft", "merge", "rm", "ppo", "dpo", "eval"]
    assert hh.folder == Path("outputs/smollm2-hh") and hh.steps[0].output == Path("outputs/smollm2/base")


def _done(step: chain.Step) -> bool:
    return (step.output / outputs.METRICS_FILE).is_file()


def test_an_unknown_chain_is_named_with_the_chains_there_are(capsys):
    assert main(["demo", "--chain", "nope"]) == 2
    assert "no chain 'nope'; the chains are sandbox, smollm2, smollm2-hh" in capsys.readouterr().err


def test_demo_refuses_a_stage_its_chain_does_not_have(capsys):
    assert main(["demo", "--chain", "smollm2", "--until", "base"]) == 2
    assert "no stage 'base' in the chain; it has ['import', 'sft', 'merge'" in capsys.readouterr().err


def test_chain_runs_a_stage_once_and_again_after_its_input_changes(runs, tmp_path, capsys):
    sft = tmp_path / "sft"
    shutil.copytree(runs / "sft", sft)
    argv = ("eval", "--policies", f"sft={sft}", "--num_prompts", "7", "--output_dir", str(tmp_path / "eval"))
    step = chain.Step("eval", argv, tmp_path / "eval", (sft,))
    assert [row["ran"] for row in chain.run([step], main)] == [True]
    first = metrics(step.output)
    assert first["prompts"] == 7 and json.loads((step.output / outputs.CHAIN_FILE).read_text())["seconds"] > 0
    assert [row["ran"] for row in chain.run([step], main)] == [False]
    assert "eval: up to date" in capsys.readouterr().out
    # its input retrained: the SFT folder's metrics.json is part of the eval step's fingerprint
    (sft / outputs.METRICS_FILE).write_text(json.dumps({**metrics(sft), "train_loss": 0.5}))
    assert [row["ran"] for row in chain.run([step], main)] == [True]
    assert [row["ran"] for row in chain.run([step], main)] == [False]
    assert [row["ran"] for row in chain.run([step], main, force=True)] == [True]


def test_a_failing_stage_stops_the_chain_with_its_name(tmp_path):
    bad = chain.Step(
        "sft", ("sft", "--config", str(ROOT / "recipes/sandbox/sft/config_smoke.yaml"), "--lr", "1"), tmp_path
    )
    after = chain.Step("rm", ("rm",), tmp_path / "rm")
    with pytest.raises(PipelineError, match=r"stage sft failed \(exit code 2\)"):
        chain.run([bad, after], main)
    assert not (tmp_path / outputs.CHAIN_FILE).exists()
