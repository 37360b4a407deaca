"""vLLM as the generation engine (`generation_engine: vllm`, pipeline/vllm_engine.py) on the sandbox model.

The engine runs in vLLM's own venv (`make setup-vllm`). Without one the tests that need it skip, unless
REQUIRE_VLLM=1 (CI sets it) makes a missing engine a failure. What they hold: the engine's weights
follow the policy's through PPO's updates (log-probs of fixed responses equal the policy's, not SFT's),
every update still starts at ratio 1, a killed run resumes to the uninterrupted one, and greedy answers
equal the pipeline's own sampler's.
"""

import copy
import json
import os
import sys

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig

from pipeline import outputs, vllm_engine
from pipeline.cli import main
from pipeline.ppo.trainer import PPOTrainer
from pipeline.sampling import left_pad, response_logprobs, right_pad
from pipeline.vllm_engine import VLLM_VERSION, full_weights, kv_cache_gib
from scripts import engine_matrix
from tests.conftest import ROOT, SMOKE, assert_resumed_as_uninterrupted, check, log, metrics, ppo_args, stage_args
from tests.test_resume import killed, resume

REQUIRED = os.environ.get("REQUIRE_VLLM") == "1"
needs_vllm = pytest.mark.skipif(
    not REQUIRED and not (os.environ.get("VLLM_PYTHON") or (ROOT / ".venv-vllm/bin/python").is_file()),
    reason="no vLLM venv: `make setup-vllm`",
)
VLLM = {"generation_engine": "vllm"}
# One optimiser step per update: each update's statistics are those of its rollout's policy
ONE_STEP = {"num_ppo_epochs": 1, "num_mini_batches": 1, "total_episodes": 32}
LORA_BF16 = {"bf16": "true", "use_cpu": "true", "use_peft": "true", "lora_r": 8, "lora_alpha": 16}


def test_kv_cache_is_sized_from_the_model_and_the_batch():
    # SmolLM2-135M's shape: 30 layers, 3 key-value heads of 64: 2 * 30 * 3 * 64 * 2 bytes = 23,040 per token in bf16
    config = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert kv_cache_gib(config, 512, 1024, torch.bfloat16) == 12  # 11.25 GiB, rounded up
    assert kv_cache_gib(config, 512, 1024, torch.float32) == 23  # 22.5
    assert kv_cache_gib(config, 64, 256, torch.bfloat16) == 1  # 0.35: at least 1


def test_full_weights_merge_lora_under_the_base_names_and_leave_the_model_alone(runs):
    base = AutoModelForCausalLM.from_pretrained(runs / "sft")
    names = set(base.state_dict())
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    for name, parameter in model.named_parameters():
        if "lora_B" in name:  # B starts at 0: a LoRA that has learnt something
            torch.nn.init.normal_(parameter, std=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weights = full_weights(model)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert set(weights) == names == set(merged)
    for name, tensor in merged.items():
        torch.testing.assert_close(weights[name], tensor)
    assert not torch.equal(weights["model.layers.0.mlp.down_proj.weight"], base.model.layers[0].mlp.down_proj.weight)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_a_missing_vllm_is_one_error_line_naming_the_install(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VLLM_PYTHON", str(tmp_path / "no-venv/bin/python"))
    assert main(ppo_args(models, tmp_path / "ppo", **VLLM)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: generation_engine vllm: no vLLM venv at") and "make setup-vllm" in err[-1]
    assert not any(tmp_path.iterdir())  # nor a .partial folder: it stops before starting the work


def test_another_vllm_version_is_one_error_line_naming_the_install(models, tmp_path, monkeypatch, capsys):
    # A venv whose vllm is another release: the engine process starts, and reports its version
    fake = tmp_path / "site" / "vllm"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "0.0.1"\n\nclass LLM:\n    def __init__(self, **kwargs): pass\n')
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={fake.parent} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    monkeypatch.setenv("VLLM_PYTHON", str(python))
    assert main(ppo_args(models, tmp_path / "ppo", **VLLM)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == f"error: vLLM 0.0.1 in {python}, the pipeline needs {VLLM_VERSION}: run `make setup-vllm`"


@pytest.fixture(scope="module")
def vllm_models(models, tmp_path_factory):
    """The smoke base and SFT with 3 attention heads of 32 (vLLM's CPU attention has no head of 24, the smoke
    model's), and the smoke reward model."""
    out = tmp_path_factory.mktemp("vllm_models")
    base = stage_args("base", SMOKE / "base/config_smoke.yaml", output_dir=out / "base", num_attention_heads=3)
    assert main(base) == 0
    sft = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=out / "base", output_dir=out / "sft")
    assert main(sft) == 0
    return out / "sft", models[1]


def _engine_against_the_policy(checks: dict):
    """A `PPOTrainer.train` that, once trained, gives the engine the policy and compares their log-probs."""
    train = PPOTrainer.train

    def train_then_compare(self):
        train(self)
        self._sync_engine()
        queries = [self.query_ids[i] for i in range(16)]
        responses = self.vllm.generate(queries, 1.0, self.args.response_length, self.stop_token_id, seed=0)
        q, qm = left_pad(queries, self.tokenizer.pad_token_id)
        r, mask = right_pad(responses, self.tokenizer.pad_token_id)
        with torch.no_grad(), self.accelerator.autocast():
            policy, _ = response_logprobs(self.policy, q, qm, r, mask, 1.0)
            reference, disabled = self.reference()
            with disabled():
                sft, _ = response_logprobs(reference, q, qm, r, mask, 1.0)
        engine, _ = right_pad(self.vllm.logprobs(queries, responses), 0.0)
        checks["to_policy"] = ((engine - policy).abs() * mask).max().item()
        checks["to_sft"] = ((engine - sft).abs() * mask).max().item()

    return train_then_compare


@pytest.fixture(scope="module")
def vllm_run(vllm_models, tmp_path_factory):
    """The smoke PPO recipe (full weights, fp32) with vLLM rollouts, and the engine compared with the policy."""
    out, checks = tmp_path_factory.mktemp("vllm") / "ppo", {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PPOTrainer, "train", _engine_against_the_policy(checks))
        assert main(ppo_args(vllm_models, out, **VLLM, **ONE_STEP)) == 0
    return out, checks


@needs_vllm
@pytest.mark.slow
def test_vllm_rollouts_start_each_update_at_ratio_1_and_the_engine_holds_the_policy(vllm_run):
    out, checks = vllm_run
    steps = log(out)
    assert len(steps) == 4
    for step in steps:
        # Rollout log-probs come from the trainer's own pass, whatever vLLM's numerics
        assert step["policy/approxkl"] < 1e-10 and step["policy/clipfrac_avg"] == 0, step["step"]
        assert step["time/weight_sync"] > 0
    # fp32 engine: the policy's log-probs to float error; SFT's are far off after 4 updates
    assert checks["to_policy"] < 1e-4 and checks["to_sft"] > 1e-2, checks
    assert metrics(out)["eval"]["policies"]["ppo"]["gold"]["mean"] is not None


@needs_vllm
@pytest.mark.slow
def test_lora_in_bf16_syncs_the_merged_adapter(vllm_models, tmp_path, monkeypatch):
    checks = {}
    monkeypatch.setattr(PPOTrainer, "train", _engine_against_the_policy(checks))
    out = tmp_path / "ppo"
    assert main(ppo_args(vllm_models, out, **VLLM, **ONE_STEP, **LORA_BF16, learning_rate=1e-3)) == 0
    assert all(step["policy/approxkl"] < 1e-10 for step in log(out))
    # bf16 engine against the policy under bf16 autocast: kernels differ, so a stated tolerance (0.1 nats per
    # token), against a policy that the adapters moved further from SFT
    assert checks["to_policy"] < 0.1 and checks["to_sft"] > 3 * checks["to_policy"], checks


@needs_vllm
@pytest.mark.slow
def test_vllm_ppo_killed_resumes_to_the_uninterrupted_run(vllm_models, vllm_run, tmp_path, caplog):
    out = tmp_path / "ppo"
    args = ppo_args(vllm_models, out, **VLLM, **ONE_STEP, save_steps=1)
    killed("step", 2, args)  # in update 3, checkpoint-2 complete: the engine process dies with it
    assert "checkpoint-2 (step 2 of 4)" in resume(args, caplog)
    # The seeds of vLLM's draws come from the trainer's checkpointed generator, and the engine is given the
    # resumed weights before its first rollout
    assert_resumed_as_uninterrupted(out, vllm_run[0])


@needs_vllm
@pytest.mark.slow
def test_vllm_greedy_answers_equal_the_pipelines_sampler(vllm_models, tmp_path):
    sft, rm = vllm_models
    answers = {}
    for engine in ("torch", "vllm"):
        out = tmp_path / engine
        argv = ["eval", "--policies", f"sft={sft}", "--reward_model", str(rm), "--num_prompts", "40"]
        argv += ["--num_samples", "2", "--best_of_n", "0", "--output_dir", str(out), "--generation_engine", engine]
        assert main(argv) == 0
        rows = (out / outputs.EVAL_SAMPLES_FILE).read_text().splitlines()
        answers[engine] = [json.loads(row)["sft"] for row in rows]
    assert answers["vllm"] == answers["torch"]


def test_the_worker_imports_nothing_of_the_pipeline():
    # It runs in vLLM's venv, whose transformers is not ours
    lines = (ROOT / "pipeline/vllm_worker.py").read_text().splitlines()
    imports = [line.strip() for line in lines if line.strip().startswith(("import ", "from "))]
    assert imports and not any("pipeline" in line for line in imports)


def test_requirements_pin_the_version_the_engine_checks():
    for name in ("requirements-vllm.txt", "requirements-vllm-cuda.txt"):
        pins = [line for line in (ROOT / name).read_text().splitlines() if line.startswith("vllm")]
        assert pins and all(line.endswith(f"=={VLLM_VERSION}") for line in pins), name
    assert vllm_engine.INSTALL == "make setup-vllm"


@needs_vllm
@pytest.mark.slow
def test_vllm_ppo_on_two_processes_gives_each_its_engine(vllm_models, tmp_path):
    sft, rm = vllm_models
    out = tmp_path / "ppo"
    extra = [*("--generation_engine", "vllm", "--num_ppo_epochs", "1", "--num_mini_batches", "1")]
    check(engine_matrix.launch(engine_matrix.stage_args("ppo", sft, sft, rm, out, *extra, "--total_episodes", "32")))
    steps = log(out)
    assert len(steps) == 4  # 4 episodes per process per update
    assert all(step["policy/approxkl"] < 1e-10 and step["time/weight_sync"] > 0 for step in steps)
    assert metrics(out)["num_processes"] == 2 and metrics(out)["rank_divergence"] == 0.0
