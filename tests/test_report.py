"""report.md and its figures, from the files the stages write."""

import json
import math

import matplotlib.image

from pipeline import report
from pipeline.answers import Answers
from pipeline.chain import Chain, Step
from pipeline.evaluation import compare


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


PROMPTS = [[{"role": "user", "content": p}] for p in ("Add 2 and 3.", "Reverse the word cat.")]


def _answers(kl: float, samples: int) -> Answers:
    """Answers to PROMPTS: greedy, `samples` sampled ones per prompt, RM scores, KL to the reference."""
    texts = ["Sure! 5", "tac"]
    return Answers(
        texts=texts,
        finished=[True, True],
        tokens=[3, 2],
        rm=[0.5, 1.0],
        samples=[[t, t + "!"][:samples] + [t] * (samples - 2) for t in texts],
        samples_finished=[[True] * samples] * 2,
        samples_rm=[[0.1 * i for i in range(samples)]] * 2,
        kl=[kl, kl],
    )


def _run(tmp_path, with_ppo=True):
    for stage in ("base", "sft", "rm"):
        rows = [
            {"loss": 2.0 / s, "step": s, **({"accuracy": 0.5 + s / 100} if stage == "rm" else {})} for s in (1, 2, 3)
        ]
        _jsonl(tmp_path / stage / "log.jsonl", rows + [{"train_runtime": 1.0, "step": 3}])
        (tmp_path / stage / "metrics.json").write_text("{}")
        (tmp_path / stage / "chain.json").write_text(json.dumps({"fingerprint": "x", "seconds": 12.4}))
    if with_ppo:
        for stage in ("ppo", "ppo_ptx"):
            rows = [
                {
                    "episode": 64 * s,
                    "objective/rm_score": s / 4,
                    "objective/kl": s / 10,
                    "objective/token_entropy": 0.5,
                    "objective/gold": 0.6 + math.log(s) / 20,
                }
                for s in range(1, 9)
            ]
            _jsonl(tmp_path / stage / "log.jsonl", rows)
            trained = {"train_runtime": 61.7, "train_steps": 8, "episodes": 512}
            (tmp_path / stage / "metrics.json").write_text(json.dumps(trained))
    answers = {"sft": _answers(0.0, 3), "ppo": _answers(0.4, 1)} if with_ppo else {"sft": _answers(0.0, 1)}
    evaluation, _ = compare(PROMPTS, answers, "sft", sandbox=True, temperature=1.0)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(evaluation))
    (tmp_path / "eval" / "eval.md").write_text("# Evaluation on 2 prompts\n\n## Samples\n\n| prompt |\n")
    # A chain with these folders: the report reads a stage from the command of its step
    steps = [Step(name, (name, "--config", f"{name}.yaml"), tmp_path / name) for name in ("base", "sft", "rm")]
    steps += [Step("ppo", ("ppo",), tmp_path / "ppo"), Step("ppo-ptx", ("ppo",), tmp_path / "ppo_ptx")]
    policies = [f"{name}={tmp_path / name}" for name in ("sft", "ppo", "ppo_ptx")]
    steps.append(
        Step("eval", ("eval", "--policies", *policies, "--output_dir", str(tmp_path / "eval")), tmp_path / "eval")
    )
    return Chain("test", tmp_path, steps)


def test_report_links_every_figure_and_the_evaluation(tmp_path):
    path = report.write(_run(tmp_path))
    text = path.read_text()
    assert path == tmp_path / "report.md" and not (tmp_path / "report.md.partial").exists()
    figures = ["training_curves", "rl_training", "reward_vs_kl", "gold_by_family"]
    for name in figures:
        assert f"(figures/{name}.png)" in text
        height, width, _ = matplotlib.image.imread(tmp_path / "figures" / f"{name}.png").shape
        assert width > 600 and height > 300
    # every method in one table: gold, its differences and win-rates against SFT, KL, what its training cost
    assert "| policy | gold greedy | gold sampled | greedy - sft | sampled - sft | win vs sft | win vs rule |" in text
    ppo_row = next(line for line in text.splitlines() if line.startswith("| ppo | "))
    assert ppo_row.endswith("| 62 | 512 episodes |") and ppo_row.count(" | ") == 9
    assert "| sft | 0.917 | 0.861 | - | - | - | 0.250 |" in text and "| best-of-" not in text  # 3 samples: no n of 4
    assert (
        "| sft | 12 s | stale: an input changed since |" in text
        and "## Evaluation on 2 prompts" in text
        and "### Samples" in text
    )


def test_report_leaves_out_what_was_not_run(tmp_path):
    text = report.write(_run(tmp_path, with_ppo=False)).read_text()
    assert "training_curves.png" in text and "rl_training.png" not in text and "reward_vs_kl" not in text
