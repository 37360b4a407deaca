"""The package's shape: imports run one way (no cycle), the commands that load no model import no torch,
and the stage registry drives the CLI's --help."""

import ast
import dataclasses
import importlib
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.registry import COMMANDS, STAGES
from tests.conftest import ROOT


def import_graph() -> dict[str, set[str]]:
    """Module -> the pipeline modules it imports, at module level or inside functions."""
    files = {
        ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): f
        for f in ROOT.glob("pipeline/**/*.py")
    }
    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
                imported |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files else node.module for a in node.names
                }
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def test_pipeline_imports_have_no_cycle():
    graph, done, path = import_graph(), set(), []

    def visit(module: str) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert "pipeline.cli" in graph and graph["pipeline.chain"] >= {"pipeline.outputs"}


def reached(graph: dict[str, set[str]], module: str) -> set[str]:
    """Every pipeline module `module` imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        for imported in graph[todo.pop()] - seen:
            seen.add(imported)
            todo.append(imported)
    return seen


def test_imports_run_one_way_ppo_knows_no_sandbox_and_only_the_cli_knows_the_stages():
    graph = import_graph()
    for module in (m for m in graph if m.startswith("pipeline.ppo")):
        assert not {m for m in reached(graph, module) if m.startswith("pipeline.sandbox")}, module
    for module in ("pipeline.sampling", "pipeline.scoring", "pipeline.answers", "pipeline.reward", "pipeline.models"):
        assert not {m for m in reached(graph, module) if m.startswith(("pipeline.ppo", "pipeline.stages"))}, module
    importers = {m for m, imported in graph.items() if any(i.startswith("pipeline.stages") for i in imported)}
    assert {m for m in importers if not m.startswith("pipeline.stages")} == set()  # the registry names them as text


def test_every_command_is_a_registry_row_and_every_stage_module_a_recipe_stage(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {name}" in listed for name in COMMANDS)
    stage_modules = {path.stem for path in (ROOT / "pipeline/stages").glob("*.py")} - {"__init__", "common"}
    named = {command.function.split(":")[0].rpartition(".")[2] for command in COMMANDS.values()}
    assert stage_modules <= named
    for command in COMMANDS.values():
        assert callable(
            getattr(importlib.import_module(command.function.split(":")[0]), command.function.split(":")[1])
        )


def test_the_cli_chain_and_report_import_no_torch():
    heavy = "('torch', 'trl', 'transformers', 'accelerate')"
    code = f"import sys, pipeline.cli, pipeline.report; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_lists_each_of_its_recipe_keys(name, capsys):
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    for cls in STAGES[name].config_classes():
        for field in dataclasses.fields(cls):
            if field.init and not field.name.startswith("_"):
                assert f"  --{field.name} (" in text, field.name


def test_a_stage_without_a_recipe_says_how_to_get_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["rm"])
    assert exit_.value.code == 2 and "python -m pipeline rm --help" in capsys.readouterr().err
