"""`python -m pipeline <stage> --config RECIPE.yaml [--key value ...]`, plus `data`, `eval-rm` and `summary`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipeline.configs import STAGE_CONFIGS, PipelineError, load_configs, parse_overrides


def _run_recipe_stage(stage: str, config: str, overrides: list[str]) -> None:
    configs, recipe = load_configs(stage, config, parse_overrides(overrides))
    importlib.import_module(f"pipeline.stages.{stage}").run(*configs, recipe=recipe)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", allow_abbrev=False, description=__doc__)
    stages = parser.add_subparsers(dest="stage", required=True)
    for stage in STAGE_CONFIGS:
        sub = stages.add_parser(stage, allow_abbrev=False, help=f"run the {stage} stage from a recipe")
        sub.add_argument("--config", required=True, help="recipe YAML; any recipe key can follow as --key value")
    data = stages.add_parser("data", allow_abbrev=False, help="load a data card and report what it gives")
    data.add_argument("card", help="path of the data card (data_cards/<name>.md)")
    data.add_argument("--data_files", help="local files in the card's format, instead of the card's source")
    data.add_argument("--split", default="train")
    data.add_argument("--max_rows", type=int)
    data.add_argument("--output_dir", help="also write the canonical rows to OUTPUT_DIR/<split>.jsonl")
    eval_rm = stages.add_parser("eval-rm", allow_abbrev=False, help="evaluate a reward model on held-out comparisons")
    eval_rm.add_argument("rm_dir", help="a reward-model output folder (full or LoRA)")
    eval_rm.add_argument("--dataset_card", help="comparisons card (default: the one the RM was trained on)")
    eval_rm.add_argument("--split", help="held-out split (default: the RM recipe's dataset_test_split)")
    eval_rm.add_argument("--data_files")
    eval_rm.add_argument("--max_rows", type=int)
    summary = stages.add_parser("summary", allow_abbrev=False, help="print a table of the finished stages of a run")
    summary.add_argument("run_dir", nargs="?", default="outputs/demo")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if args.stage not in STAGE_CONFIGS and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        if args.stage == "data":
            from pipeline.stages import data

            data.run(args.card, args.split, args.data_files, args.max_rows, args.output_dir)
        elif args.stage == "eval-rm":
            from pipeline.stages import eval_rm

            eval_rm.run(args.rm_dir, args.dataset_card, args.split, args.data_files, args.max_rows)
        elif args.stage == "summary":
            from pipeline.stages import summary

            summary.run(args.run_dir)
        else:
            _run_recipe_stage(args.stage, args.config, rest)
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
