"""One run per output folder, and a NaN or inf stops a stage with its last checkpoint intact."""

import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from pipeline import locks, outputs, report
from pipeline.chain import Chain, Step
from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.ppo import trainer
from pipeline.ppo.trainer import PPOTrainer
from pipeline.stages.common import StopOnNonFinite
from tests.conftest import ROOT, SMOKE, assert_resumed_as_uninterrupted, log, ppo_args, stage_args


def test_a_live_run_holds_its_output_folder(tmp_path):
    out = tmp_path / "sft"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        locks.lock_path(out).write_text(f"{socket.gethostname()}:{holder.pid}\n")
        with pytest.raises(PipelineError, match=rf"{out} is being written by another run \(pid {holder.pid} on "):
            outputs.start(out, "sft", {"seed": 0}, [])
        assert not outputs.partial_dir(out).exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_dead_runs_lock_is_taken_over_with_a_warning(tmp_path, caplog):
    out = tmp_path / "sft"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    locks.lock_path(out).write_text(f"{socket.gethostname()}:{int(dead.stdout)}\n")
    with caplog.at_level(logging.WARNING):
        work, resume = outputs.start(out, "sft", {"seed": 0}, [])
    assert "taking over the lock" in caplog.text and not resume
    assert locks.lock_path(out).read_text().strip().endswith(f":{os.getpid()}")
    outputs.finish(work, out)
    assert out.is_dir() and not locks.lock_path(out).exists()  # released with the finished folder


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
    out = tmp_path / "rm"
    locks.lock_path(out).write_text("some-other-host:1\n")
    with pytest.raises(PipelineError, match="pid 1 on some-other-host"):
        outputs.start(out, "rm", {}, [])


def test_a_second_run_on_a_held_folder_exits_2_in_one_line(models, tmp_path, capsys):
    out = tmp_path / "ppo"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        locks.lock_path(out).write_text(f"{socket.gethostname()}:{holder.pid}\n")
        assert main(ppo_args(models, out)) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: ") and str(out) in error and str(holder.pid) in error
    finally:
        holder.kill()
        holder.wait()


def test_a_nan_reward_stops_ppo_and_the_run_resumes_from_its_last_checkpoint(models, full_run, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    scores = PPOTrainer._scores

    def nan_in_update_3(self, rm_scores, gold):
        result = scores(self, rm_scores, gold)
        return result * float("nan") if self.step == 2 else result

    monkeypatch.setattr(PPOTrainer, "_scores", nan_in_update_3)
    assert main(ppo_args(models, out)) == 2
    partial = outputs.partial_dir(out)
    assert (partial / "checkpoint-2").is_dir() and [s["step"] for s in log(partial)] == [1, 2]
    assert not locks.lock_path(out).exists()  # a failed stage frees its folder
    monkeypatch.setattr(PPOTrainer, "_scores", scores)
    assert main(ppo_args(models, out)) == 0
    assert_resumed_as_uninterrupted(out, full_run)


def test_a_nan_loss_names_the_update_and_the_quantity(models, tmp_path, monkeypatch, capsys):
    value_loss = trainer.value_loss

    def nan_value_loss(*args, **kwargs):
        loss, stats = value_loss(*args, **kwargs)
        return loss * torch.tensor(float("inf")), stats

    monkeypatch.setattr(trainer, "value_loss", nan_value_loss)
    assert main(ppo_args(models, tmp_path / "inf")) == 2
    assert "error: ppo update 1: value loss not finite (NaN or inf)" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["loss", "grad_norm", "reward"])
def test_trl_stages_stop_at_a_logged_nan(key, tmp_path):
    callback = StopOnNonFinite()
    state, args = SimpleNamespace(global_step=7), SimpleNamespace(output_dir=str(tmp_path))
    callback.on_log(args, state, None, logs={key: 0.5, "learning_rate": 1e-3})
    with pytest.raises(PipelineError, match=rf"step 7: {key} not finite .* {tmp_path} is kept"):
        callback.on_log(args, state, None, logs={key: math.nan})


def test_a_token_in_the_environment_is_written_nowhere(runs, tmp_path, monkeypatch, capsys):
    """SFT, a dry-run push and the report, with a fake token planted: no file they write holds it."""
    token = "hf_FakeTokenForTheLeakTest0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    sft = tmp_path / "run" / "sft"
    argv = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=runs / "base", output_dir=sft)
    assert main([*argv, "--max_steps", "2", "--sandbox_eval_prompts", "7", "--hub_token", token]) == 0
    assert main(["push", str(sft), "--repo_id", "someone/leak-test", "--dry_run", str(tmp_path / "upload")]) == 0
    report.write(Chain("leak", tmp_path / "run", [Step("sft", ("sft", "--config", str(SMOKE)), sft)]))
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10 and (sft / "recipe.yaml").is_file() and (tmp_path / "upload" / "README.md").is_file()
    assert not [p for p in written if token.encode() in p.read_bytes()]
    assert token not in capsys.readouterr().out


def test_no_checkpoint_is_unpickled_and_no_remote_code_runs_by_default():
    sources = {p: p.read_text() for p in (ROOT / "pipeline").rglob("*.py")}
    loads = [(p, line) for p, text in sources.items() for line in text.splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for _, line in loads)
    assert not any(re.search(r"^\s*import pickle|pickle\.loads?\(", text, re.M) for text in sources.values())
    assert "trust_remote_code: bool = False" in sources[ROOT / "pipeline" / "configs.py"]


STOPS = [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")]


@pytest.mark.slow  # a subprocess killed mid-run
@pytest.mark.parametrize(("signal_name", "status", "said"), STOPS)
def test_a_stopped_run_says_where_it_stopped_and_frees_its_folder(runs, tmp_path, signal_name, status, said):
    """A scheduler's SIGTERM, like Ctrl-C: one line naming the checkpoint to resume from, the lock released."""
    out = tmp_path / "sft"
    args = stage_args("sft", SMOKE / "sft/config_smoke.yaml", model_name_or_path=runs / "base", output_dir=out)
    command = [sys.executable, "-m", "tests.killed", "step", "27", *map(str, args), "--sandbox_eval_prompts", "0"]
    env = {**os.environ, "KILL_SIGNAL": signal_name}
    # As a terminal's foreground job gets it: a shell's background job (CI's, say) starts with SIGINT ignored
    result = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == status and "Traceback" not in result.stderr, result.stderr[-2000:]
    work = outputs.partial_dir(out)
    assert errors == [f"error: {said}: {work} keeps checkpoint-25: the same command resumes from there"]
    assert not locks.lock_path(out).exists() and (work / "checkpoint-25").is_dir()
