"""The gold judge over many responses: which prompts it can judge, rewards, rows with its parts, summaries."""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from pipeline.sandbox.judge import gold_components
from pipeline.sandbox.tasks import parse_prompt


def is_sandbox(conversations: list[list[dict]]) -> bool:
    """Whether every conversation ends with a sandbox task, which the gold judge can score."""
    return all(parse_prompt(c[-1]["content"]) is not None for c in conversations)


def family(conversation: list[dict]) -> str:
    """The task family of a sandbox conversation's last message."""
    return parse_prompt(conversation[-1]["content"]).family


def balanced_indices(conversations: list[list[dict]]) -> list[int]:
    """Indices that give every task family as many prompts as the largest one, families interleaved.

    A smaller family's prompts recur in turn (the label stage's rule), so a sampler drawing uniformly
    from them draws each family equally often.
    """
    members: dict[str, list[int]] = defaultdict(list)
    for index, conversation in enumerate(conversations):
        members[family(conversation)].append(index)
    size = max(map(len, members.values()))
    return [members[f][i % len(members[f])] for i in range(size) for f in sorted(members)]


def gold_rewards(conversations: list[list[dict]], responses: list[str], finished: list[bool]) -> list[float]:
    """The gold judge's score of each response to a sandbox conversation (a reward; 0 to 1)."""
    return [
        gold_components(c[-1]["content"], r, f)["gold"]
        for c, r, f in zip(conversations, responses, finished, strict=True)
    ]


def score_responses(prompts: list[str], responses: list[str], finished: list[bool]) -> list[dict]:
    """One row per response: prompt, family, response and the judge's parts."""
    return [
        {"prompt": p, "family": parse_prompt(p).family, "response": r, "finished": f, **gold_components(p, r, f)}
        for p, r, f in zip(prompts, responses, finished, strict=True)
    ]


def summarize(rows: list[dict]) -> dict:
    """Means overall and per family of gold, correctness and style."""
    families = sorted({row["family"] for row in rows})
    return {
        "gold_mean": mean(r["gold"] for r in rows),
        "gold_correctness": mean(r["correctness"] for r in rows),
        "gold_style": mean(r["style"] for r in rows),
        "gold_by_family": {f: mean(r["gold"] for r in rows if r["family"] == f) for f in families},
        "gold_correctness_by_family": {f: mean(r["correctness"] for r in rows if r["family"] == f) for f in families},
        "finished_fraction": mean(float(r["finished"]) for r in rows),
    }
