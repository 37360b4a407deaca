"""Break one thing the learning tests guard, in a copy of the tree, and check that its test fails.

`python -m scripts.mutations [NAME ...]` copies the working tree (what git tracks and has not been told to
ignore) into a temporary folder once per mutation, makes the one edit, runs the tests named for it
there, and prints a table: a mutation the tests still pass is a hole in the suite. The working tree is
never edited. Each row takes 1-5 minutes on 2 cores (the smoke models are trained in each copy).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNING = "tests/test_ppo_learning.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: str  # a pytest node id or `-k` expression under the file


MUTATIONS = [
    Mutation(
        "advantages negated",
        "pipeline/ppo/trainer.py",
        "logprobs, part.logprobs, part.advantages, part.mask, args.cliprange",
        "logprobs, part.logprobs, -part.advantages, part.mask, args.cliprange",
        f"{LEARNING}::test_ppo_raises_the_reward_it_is_given",
    ),
    Mutation(
        "old log-probs replaced by the new ones (ratio 1)",
        "pipeline/ppo/trainer.py",
        "logprobs, part.logprobs, part.advantages, part.mask, args.cliprange",
        "logprobs, logprobs.detach(), part.advantages, part.mask, args.cliprange",
        f"{LEARNING}::test_the_ratio_compares_the_learning_policy_with_the_rollouts",
    ),
    Mutation(
        "value loss multiplied by 0",
        "pipeline/ppo/trainer.py",
        "policy_weight * loss + args.vf_coef * vf_loss",
        "policy_weight * loss + 0 * vf_loss",
        f"{LEARNING}::test_the_critic_learns_the_returns",
    ),
    Mutation(
        "ptx loss multiplied by 0",
        "pipeline/ppo/trainer.py",
        "loss = loss + args.ptx_coef * ptx_loss",
        "loss = loss + 0 * ptx_loss",
        f"{LEARNING}::test_ptx_pulls_the_policy_towards_the_pretraining_text",
    ),
    Mutation(
        "critic warm-up ignored (the policy learns from the first update)",
        "pipeline/ppo/trainer.py",
        "policy_weight = 0.0 if self.step < args.critic_warmup_updates else 1.0",
        "policy_weight = 1.0",
        f"{LEARNING}::test_a_critic_warm_up_trains_the_value_model_alone",
    ),
    Mutation(
        "critic warm-up leaves the policy's learning rate on (weight decay moves it)",
        "pipeline/ppo/trainer.py",
        'if group.get("model") == "policy":',
        "if False:",
        f"{LEARNING}::test_a_critic_warm_up_trains_the_value_model_alone",
    ),
    Mutation(
        "LoRA reward read with the value adapter on",
        "pipeline/ppo/trainer.py",
        "return value_model, value_model.disable_adapter",
        "return plain(value_model)",
        f"{LEARNING}::test_with_lora_the_reward_stays_the_frozen_rm_while_the_value_adapter_learns",
    ),
    Mutation(
        "critic head left in the reward model's units",
        "pipeline/ppo/models.py",
        "        head.weight.div_(std)\n        head.bias.sub_(mean).div_(std)",
        "        pass",
        f"{LEARNING}::test_the_critic_starts_as_the_normalised_reward",
    ),
    Mutation(
        "the first rollout's values left unscaled when its statistics rescale the head",
        "pipeline/ppo/trainer.py",
        "        return (values - mean) / std",
        "        return values",
        f"{LEARNING}::test_the_critic_starts_as_the_normalised_reward",
    ),
    Mutation(
        "attention dropout left on",
        "pipeline/ppo/models.py",
        "            module.attention_dropout = 0.0",
        "            pass",
        "tests/test_ppo_models.py::test_attention_dropout_from_the_config_is_switched_off",
    ),
    Mutation(
        "RM batches ordered by the pass, not the epoch (set_epoch ignored)",
        "pipeline/reward.py",
        "    def set_epoch(self, epoch: int) -> None:\n        self.epoch = epoch",
        "    def set_epoch(self, epoch: int) -> None:\n        pass",
        "tests/test_resume.py::test_rm_killed_in_its_second_epoch_resumes_to_the_uninterrupted_model",
    ),
    Mutation(
        "RM trained with chosen and rejected swapped (its scores negated in the loss)",
        "pipeline/reward.py",
        "logits=scores[inverse].unsqueeze(-1)",
        "logits=-scores[inverse].unsqueeze(-1)",
        "tests/test_rm_integration.py::test_the_smoke_rm_learns_a_preference_it_can_see_on_held_out_pairs",
    ),
    Mutation(
        "DPO trained with chosen and rejected swapped",
        "pipeline/stages/dpo.py",
        "train_dataset = select_pairs(train_dataset, pair_args.preference_pairs)",
        "train_dataset = select_pairs(train_dataset, pair_args.preference_pairs).rename_columns(\n"
        '        {"chosen": "rejected", "rejected": "chosen"}\n    )',
        "tests/test_dpo.py::test_dpo_learns_a_preference_it_can_see_and_publishes_a_causal_lm",
    ),
    Mutation(
        "RLOO/GRPO given the RM's score negated",
        "pipeline/stages/online_rl.py",
        "        return response_rewards(plain(scorer), reader, prompts,"
        ' [c[0]["content"].strip() for c in completions])',
        "        rewards = response_rewards(plain(scorer), reader, prompts,"
        ' [c[0]["content"].strip() for c in completions])\n        return [-r for r in rewards]',
        "tests/test_online_rl.py::test_rloo_and_grpo_raise_the_score_of_a_trained_reward_model_and_only_log_the_gold_judge",
    ),
    Mutation(
        "vLLM engine never given the policy's updated weights",
        "pipeline/ppo/trainer.py",
        "self.vllm.load_weights(self.policy)",
        "pass",
        "tests/test_vllm.py::test_vllm_rollouts_start_each_update_at_ratio_1_and_the_engine_holds_the_policy",
    ),
]


def copy_tree(destination: Path) -> None:
    """The files git tracks or would track (untracked, not ignored), without the ignored ones (.venv, outputs)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    for venv in (".venv", ".venv-vllm"):
        if (ROOT / venv).exists():
            (destination / venv).symlink_to(ROOT / venv)


def run(mutation: Mutation) -> tuple[str, str, float]:
    """'caught' when the mutated tree fails the named tests, 'MISSED' when it passes them; the failure's
    first line (an assertion, not an exception, is what shows the test saw the mutation)."""
    with tempfile.TemporaryDirectory(prefix="mutation-") as folder:
        tree = Path(folder)
        copy_tree(tree)
        target = tree / mutation.file
        text = target.read_text()
        if text.count(mutation.old) != 1:
            raise SystemExit(f"error: {mutation.file} does not hold the text of '{mutation.name}' exactly once")
        target.write_text(text.replace(mutation.old, mutation.new))
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", mutation.tests],
            cwd=tree,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
    if result.returncode not in (0, 1):
        tail = result.stdout[-2000:] + result.stderr[-2000:]
        raise SystemExit(f"error: pytest could not run {mutation.tests} (exit {result.returncode}):\n{tail}")
    if result.returncode == 0:
        return "MISSED", "", seconds
    why = next((line[1:].strip() for line in result.stdout.splitlines() if line.startswith("E ")), "?")
    return "caught", why[:100].replace("|", "/"), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all); a word of the name is enough")
    names = parser.parse_args().names
    chosen = [m for m in MUTATIONS if not names or any(name in m.name for name in names)]
    print("| mutation | test | result | first failing line | seconds |\n|---|---|---|---|---|")
    missed = 0
    for mutation in chosen:
        outcome, why, seconds = run(mutation)
        missed += outcome == "MISSED"
        test = mutation.tests.rsplit("::", 1)[-1]
        print(f"| {mutation.name} | `{test}` | {outcome} | `{why}` | {seconds:.0f} |", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
