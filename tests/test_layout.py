"""Import boundaries: `contract`, `models` and `rlhf` load neither Django nor torch; the web
app loads no torch; `annotation` and `rlhf` never import each other (they meet in
`contract`); and no two of the project's modules import each other in a circle, not even
through an import inside a function. The loading checks run in a fresh interpreter, so
nothing imported by the test run leaks in; the import graph is read from the source."""

from __future__ import annotations

import ast
import subprocess

import pytest

from tests.conftest import PYTHON, REPO, clean_env

PROBE = """
import sys, importlib
for name in {modules!r}:
    importlib.import_module(name)
{setup}
loaded = sorted(m for m in {forbidden!r} if m in sys.modules)
print(",".join(loaded))
"""


def loaded_after_import(modules: list[str], forbidden: list[str], setup: str = "") -> list[str]:
    code = PROBE.format(modules=modules, forbidden=forbidden, setup=setup)
    result = subprocess.run(
        [PYTHON, "-c", code], cwd=REPO, env=clean_env(DEBUG="1"), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


@pytest.mark.parametrize(
    "package",
    [
        "contract",
        "contract.export",
        "contract.heldout",
        "contract.comparison",
        "contract.run",
        "contract.methods",
        "contract.results",
        "contract.spans",
        "models",
        "rlhf",
        "rlhf.common",
        "rlhf.config",
        "rlhf.data",
        "rlhf.train_dpo",
        "rlhf.toy_pairs",
        "rlhf.cli",
        "rlhf.hallucination",
        "rlhf.vocabularies",
        "rlhf.reward",
        "rlhf.losses",
        "rlhf.scoring",
        "rlhf.train_rl",
        "rlhf.family_matrix",
        "rlhf.serving_check",
        "testbed.family_checkpoints",
        "contract.family_gaps",
        "contract.feedback",
        "contract.selection",
        "rlhf.ai_feedback",
        "factloop",
        "factloop.client",
    ],
)
def test_model_side_packages_load_neither_django_nor_torch(package: str) -> None:
    assert loaded_after_import([package], ["django", "torch", "transformers", "trl", "datasets"]) == []


def test_web_app_loads_no_torch() -> None:
    setup = "import django; django.setup(); import webapp.urls, webapp.wsgi, annotation.worker.tasks"
    loaded = loaded_after_import(["webapp"], ["torch", "transformers", "trl"], setup=setup)
    assert loaded == []


PACKAGES = ("annotation", "bench", "contract", "factloop", "models", "rlhf", "webapp")


def test_the_client_stands_alone() -> None:
    """factloop/ installs on a notebook's machine: it imports none of the server's packages."""
    loaded = loaded_after_import(
        ["factloop", "factloop.client"], ["annotation", "contract", "models", "rlhf", "webapp"]
    )
    assert loaded == []


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its source (top level or inside
    a function), from the source text; migrations excluded."""
    modules = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in map(resolve, targets) if t is not None and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_project_imports_another_in_a_circle() -> None:
    graph = import_graph()
    assert len(graph) > 80  # the whole project was read
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function() -> None:
    graph = {"a.services": {"a.tasks"}, "a.tasks": {"a.generation"}, "a.generation": {"a.services"}, "b": set()}
    assert cycles(graph) == [["a.generation", "a.services", "a.tasks"]]


def test_the_web_app_and_training_meet_only_in_the_contract() -> None:
    graph = import_graph()
    crossing = sorted(
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if (source.startswith("annotation") and target.startswith("rlhf"))
        or (source.startswith("rlhf") and target.startswith("annotation"))
        or (source.startswith("contract") and not target.startswith("contract"))
    )
    assert crossing == []
