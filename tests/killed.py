"""`python -m tests.killed WHERE STEP <stage args>`: a pipeline stage that SIGKILLs itself at STEP.

A helper for the crash-and-resume tests (not a test module); KILL_SIGNAL=SIGTERM or SIGINT sends that
signal instead. WHERE is `step`, inside the optimiser
step after STEP; `checkpoint`, inside the writing of checkpoint-STEP (its weights and optimiser
written, its trainer state not yet); or `finish`, just before a stage's metrics are written (STEP
unused). It patches transformers' Trainer, which runs base, SFT, RM, RLOO and GRPO, and our PPO
trainer; under `accelerate launch` every rank kills itself. `chain PLAN.json` in place of the stage
arguments runs a chain of [name, argv, output, inputs] steps.
"""

import json
import os
import signal
import sys
from pathlib import Path

from accelerate import Accelerator
from transformers import Trainer

from pipeline import chain, outputs
from pipeline.cli import main
from pipeline.ppo.trainer import PPOTrainer


def die() -> None:
    """SIGKILL, or the signal named by KILL_SIGNAL (SIGTERM: a scheduler's stop; SIGINT: Ctrl-C)."""
    os.kill(os.getpid(), getattr(signal, os.environ.get("KILL_SIGNAL", "SIGKILL")))


def kill_in_step(at: int) -> None:
    training_step, learn = Trainer.training_step, PPOTrainer.learn

    def trainer_step(self, *args, **kwargs):
        if self.state.global_step == at:
            die()
        return training_step(self, *args, **kwargs)

    def ppo_step(self, rollout):
        if self.step == at:
            die()
        return learn(self, rollout)

    Trainer.training_step, PPOTrainer.learn = trainer_step, ppo_step


def kill_in_checkpoint(at: int) -> None:
    save_rng_state, save_state = Trainer._save_rng_state, Accelerator.save_state

    def trainer_rng_state(self, output_dir):
        if self.state.global_step == at:
            die()
        return save_rng_state(self, output_dir)

    def ppo_state(self, output_dir, *args, **kwargs):
        save_state(self, output_dir, *args, **kwargs)
        if output_dir.endswith(f"checkpoint-{at}"):
            die()

    Trainer._save_rng_state, Accelerator.save_state = trainer_rng_state, ppo_state


def kill_before_output(_: int) -> None:
    def write_metrics(*_):
        die()

    outputs.write_metrics = write_metrics


def run_chain(plan: str) -> int:
    steps = json.loads(Path(plan).read_text())
    chain.run([chain.Step(n, tuple(a), Path(o), tuple(map(Path, i))) for n, a, o, i in steps], main)
    return 0


if __name__ == "__main__":
    where, step, *args = sys.argv[1:]
    {"step": kill_in_step, "checkpoint": kill_in_checkpoint, "finish": kill_before_output}[where](int(step))
    sys.exit(run_chain(args[1]) if args[0] == "chain" else main(args))
