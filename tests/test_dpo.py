"""The dpo stage (trl.DPOTrainer): which pairs of a ranked list it takes, that it learns a preference it can
see, that its LoRA reference is the adapter disabled, that it resumes after SIGKILL as if never stopped, and
that 2 processes take the steps of one."""

import datasets
import pytest
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM

from pipeline.cli import main
from pipeline.stages.dpo import pair_indices, select_pairs
from tests.conftest import SMOKE, log, metrics, stage_args
from tests.test_resume import assert_same_outputs, kill_twice_and_finish

RECIPE = SMOKE / "dpo/config_smoke.yaml"


def test_pairs_of_a_ranked_list_all_best_against_the_rest_or_best_against_the_worst():
    # a list A > B > C (its pairs as formats.ranked makes them), a list D > E, and a pair of a plain card
    rows = [
        {"chosen": "A", "rejected": "B", "group": 0},
        {"chosen": "A", "rejected": "C", "group": 0},
        {"chosen": "B", "rejected": "C", "group": 0},
        {"chosen": "D", "rejected": "E", "group": 1},
        {"chosen": "F", "rejected": "G"},
    ]
    assert pair_indices(rows, "all") == [0, 1, 2, 3, 4]
    assert pair_indices(rows, "best_vs_rest") == [0, 1, 3, 4]
    assert pair_indices(rows, "best_vs_worst") == [1, 3, 4]
    kept = select_pairs(
        datasets.Dataset.from_list([{**r, "prompt": "q", "group": r.get("group", 9)} for r in rows]), "best_vs_worst"
    )
    assert kept.column_names == ["chosen", "rejected", "prompt"] and kept["chosen"] == ["A", "D", "F"]


@pytest.fixture(scope="module")
def dpo_run(runs, tmp_path_factory):
    """The smoke recipe: 20 steps on the style comparisons (a right answer bare over the same answer in filler)."""
    out = tmp_path_factory.mktemp("dpo") / "full"
    assert main(stage_args("dpo", RECIPE, model_name_or_path=runs / "sft", output_dir=out)) == 0
    return out


def test_dpo_learns_a_preference_it_can_see_and_publishes_a_causal_lm(runs, dpo_run):
    found = metrics(dpo_run)
    # its implicit reward, beta x log(policy / SFT), orders the held-out pairs (measured: 60 of 60; swapping
    # chosen and rejected in the loss takes it to 0, scripts/mutations.py)
    assert found["eval_rewards/accuracies"] >= 0.9 and found["eval_rewards/margins"] > 1.0
    assert found["train_rows"] == 200 and found["train_steps"] == 20 and found["eval_rows"] == 60
    trained = AutoModelForCausalLM.from_pretrained(dpo_run)
    sft = AutoModelForCausalLM.from_pretrained(runs / "sft")
    moved = [n for n, p in trained.named_parameters() if not torch.equal(p, sft.get_parameter(n))]
    assert moved and all(torch.isfinite(p).all() for p in trained.parameters())


def test_lora_dpo_takes_the_adapter_disabled_as_its_reference(runs, tmp_path):
    out = tmp_path / "lora"
    lora = {"use_peft": "true", "lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-3, "max_steps": 8}
    assert main(stage_args("dpo", RECIPE, model_name_or_path=runs / "sft", output_dir=out, **lora)) == 0
    assert metrics(out)["eval_rewards/accuracies"] >= 0.9  # measured: 1.0 after 8 steps
    policy = AutoPeftModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 12]])
    with policy.disable_adapter():
        reference = policy(ids).logits
    sft = AutoModelForCausalLM.from_pretrained(runs / "sft")
    torch.testing.assert_close(reference, sft(ids).logits)  # the reference is exactly the SFT policy
    assert not torch.allclose(policy(ids).logits, reference)


@pytest.mark.slow  # killed twice, then resumed
def test_dpo_resumes_to_the_uninterrupted_model(runs, dpo_run, tmp_path, caplog):
    out = tmp_path / "dpo"
    args = stage_args("dpo", RECIPE, model_name_or_path=runs / "sft", output_dir=out)
    # checkpoints at steps 10 and 20 of 20: killed in step 16, then while checkpoint-20 is written
    assert "resuming from the last checkpoint" in kill_twice_and_finish(args, 15, 20, caplog)
    assert_same_outputs(out, dpo_run)


@pytest.mark.slow  # 2 processes under accelerate launch
def test_dpo_on_two_processes_takes_the_steps_of_one_process_with_the_same_global_batch(dpo_run, ddp_runs):
    out = ddp_runs["dpo"]  # the smoke recipe, 8 pairs a process (the engine matrix's DDP run)
    two, one = metrics(out), metrics(dpo_run)
    assert (two["num_processes"], two["effective_batch_size"], two["rank_divergence"]) == (2, 16, 0.0)
    # the same 16 pairs a step until the epoch ends at step 12.5 (200 pairs): there accelerate fills the last
    # batch of 2 processes with the epoch's first rows (even_batches), so later steps see other batches
    for a, b in zip(log(dpo_run)[:2], log(out)[:2], strict=True):
        assert (a["step"], a["num_tokens"]) == (b["step"], b["num_tokens"]) and a["loss"] == pytest.approx(
            b["loss"], rel=1e-5
        )
    assert two["eval_rewards/accuracies"] >= 0.9 and one["eval_rewards/accuracies"] >= 0.9
