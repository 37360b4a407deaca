"""The offline sandbox: instruction tasks with exact answers, a gold judge, noisy labelers, the data."""

from pipeline.sandbox.files import ensure_sandbox_data
from pipeline.sandbox.judge import gold_components, gold_score, strip_filler
from pipeline.sandbox.labelers import Labeler, bayes_accuracy, preference_probability
from pipeline.sandbox.tasks import FAMILIES, SPLITS, parse_prompt, test_prompts

__all__ = [
    "FAMILIES",
    "SPLITS",
    "Labeler",
    "bayes_accuracy",
    "ensure_sandbox_data",
    "gold_components",
    "gold_score",
    "parse_prompt",
    "preference_probability",
    "strip_filler",
    "test_prompts",
]
