"""The demo chain: fingerprints, skipping current stages, the wiring of the demo recipes."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline import chain, outputs
from pipeline.cli import main
from pipeline.errors import PipelineError
from tests.conftest import ROOT, metrics

PATH_KEYS = ("model_name_or_path", "sft_model_path", "reward_model_path")


def _finished(folder: Path, **values) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(values))
    return folder


def test_fingerprint_follows_arguments_recipe_text_and_input_metrics(tmp_path):
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
    assert chain.fingerprint(step) != second


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
    steps = chain.demo_steps()
    assert [s.name for s in chain.needed_for(steps, "ppo-ptx")] == ["base", "sft", "label", "rm", "ppo-ptx"]
    assert [s.name for s in chain.needed_for(steps, "sft")] == ["base", "sft"]
    assert [s.name for s in chain.needed_for(steps, "rloo")] == ["base", "sft", "label", "rm", "rloo"]
    assert [s.name for s in chain.needed_for(steps, "eval")] == [s.name for s in steps if s.in_whole_chain]
    with pytest.raises(PipelineError, match="no stage 'dpo'"):
        chain.needed_for(steps, "dpo")


def test_an_optional_stage_joins_the_chain_and_its_evaluation_once_it_has_run(tmp_path):
    def names(steps):
        return [s.name for s in steps if s.in_whole_chain]

    before = chain.demo_steps(tmp_path)
    assert "rloo" not in names(before) and "rloo=" not in " ".join(before[-1].argv)
    _finished(tmp_path / "rloo", gold_mean=0.8)
    after = chain.demo_steps(tmp_path)
    assert names(after) == ["base", "sft", "label", "rm", "ppo", "ppo-ptx", "rloo", "eval"]
    assert f"rloo={tmp_path / 'rloo'}" in after[-1].argv and tmp_path / "rloo" in after[-1].inputs


@pytest.mark.parametrize("name", list(chain.CHAINS))
def test_each_chains_recipes_read_exactly_the_outputs_the_chain_declares(name):
    steps = chain.CHAINS[name].steps(chain.CHAINS[name].folder)
    label = next((step.output for step in steps if step.name == "label"), None)
    made: set[Path] = set()
    for step in steps:
        assert set(step.inputs) <= made, f"{step.name} reads an output made later"
        if "--config" in step.argv:
            recipe = yaml.safe_load((ROOT / step.argv[step.argv.index("--config") + 1]).read_text())
            assert Path(recipe["output_dir"]) == step.output
            read = {Path(recipe[k]) for k in PATH_KEYS if recipe.get(k)}
            if "comparisons" in recipe.get("dataset_card", ""):
                card = (ROOT / recipe["dataset_card"]).read_text()
                assert f"{label}/train.jsonl" in card and f"{label}/test.jsonl" in card
                read.add(label)
            assert read == set(step.inputs), step.name
        made.add(step.output)


def test_the_smollm2_chain_merges_its_sft_adapter_and_evaluates_sft_and_ppo_with_best_of_n(tmp_path):
    steps = {step.name: step for step in chain.smollm2_steps(tmp_path)}
    assert [s.name for s in chain.needed_for(list(steps.values()), "rm")] == ["import", "sft", "merge", "label", "rm"]
    assert steps["merge"].argv == ("merge", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "sft_merged"))
    policies = steps["eval"].argv[
        steps["eval"].argv.index("--policies") + 1 : steps["eval"].argv.index("--reward_model")
    ]
    assert policies == (f"sft={tmp_path / 'sft_merged'}", f"ppo={tmp_path / 'ppo'}")
    assert steps["eval"].argv[steps["eval"].argv.index("--best_of_n") + 1] == "16"
    assert not steps["ppo-ptx"].in_whole_chain  # optional here, unlike the sandbox demo
    assert chain.steps_for(tmp_path / "smollm2")[0].name == "import"
    assert [s.name for s in chain.steps_for(tmp_path / "smollm2-hh")] == ["import", "sft", "merge", "rm", "ppo", "eval"]
    assert chain.steps_for(tmp_path / "demo")[0].name == "base"


def test_demo_refuses_a_stage_its_chain_does_not_have(capsys):
    assert main(["demo", "--chain", "smollm2", "--until", "base"]) == 2
    assert "no stage 'base' in the chain; it has ['import', 'sft', 'merge'" in capsys.readouterr().err


def test_chain_runs_a_stage_once_and_again_after_its_input_changes(runs, tmp_path, capsys):
    sft = runs / "sft"
    argv = ("eval", "--policies", f"sft={sft}", "--num_prompts", "7", "--output_dir", str(tmp_path / "eval"))
    step = chain.Step("eval", argv, tmp_path / "eval", (sft,))
    assert [row["ran"] for row in chain.run([step], main)] == [True]
    first = metrics(step.output)
    assert first["prompts"] == 7 and json.loads((step.output / outputs.CHAIN_FILE).read_text())["seconds"] > 0
    assert [row["ran"] for row in chain.run([step], main)] == [False]
    assert "eval: up to date" in capsys.readouterr().out
    assert [row["ran"] for row in chain.run([step], main, force=True)] == [True]


def test_a_failing_stage_stops_the_chain_with_its_name(tmp_path):
    bad = chain.Step(
        "sft", ("sft", "--config", str(ROOT / "recipes/sandbox/sft/config_smoke.yaml"), "--lr", "1"), tmp_path
    )
    after = chain.Step("rm", ("rm",), tmp_path / "rm")
    with pytest.raises(PipelineError, match=r"stage sft failed \(exit code 2\)"):
        chain.run([bad, after], main)
    assert not (tmp_path / outputs.CHAIN_FILE).exists()
