"""Import boundaries: `contract`, `models`, `rlhf` and the test bed's world and models load
neither Django nor torch; the web app loads no torch; `annotation` and `rlhf` never import
each other (they meet in `contract`); `annotation`'s rooms import only the rooms below them
(ROOMS); no two of the project's modules share a name; and no two modules import each other
in a circle, not even through an import inside a function. The loading checks run in a
fresh interpreter, so nothing imported by the test run leaks in; the import graph is read
from the source."""

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
        "rlhf.training_data",
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
        "rlhf.preflight",
        "testbed",
        "testbed.toyworld",
        "testbed.tiny",
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


PACKAGES = ("annotation", "bench", "contract", "factloop", "models", "rlhf", "testbed", "webapp")


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


# annotation/'s rooms, from the bottom up: a room imports the models and the rooms before it,
# never one after it. The app's own files (apps, models, admin registration, urls) sit
# above every room.
ROOMS = (
    ("rules", "domain errors, input limits, roles and accounts, the audit log, read queries, held-out dataset rules"),
    ("jobs", "background jobs: queued, claimed, heartbeat, swept"),
    ("labeling", "rounds and their tasks and gold, the queue, submissions, annotator quality"),
    ("data", "images and prompts, imports, exports, released formats, archives, downloads"),
    ("loop", "a round started and generated, AI labels, evaluation, training and its gate, deployment"),
    ("web", "the annotator's pages and API, serializers, parsers, authentication"),
    ("administration", "the admin site, dashboard, plots, admin pages and the admin API"),
    ("worker", "the Celery tasks"),
    ("management", "the manage.py commands"),
)
APP_FILES = {"annotation", "annotation.apps", "annotation.models", "annotation.admin", "annotation.urls"}
# What the rooms may take from the test bed: the synthetic world (its vocabulary is a
# built-in one, and import_toyworld stores its held-out scenes). Its tiny models and its demo
# are for the commands that run them (management), the tests and the benchmarks.
TESTBED_FOR_ROOMS = "testbed.toyworld"


def room_of(module: str) -> str | None:
    """The room an annotation module lives in; None for the app's own files."""
    if module in APP_FILES:
        return None
    parts = module.split(".")
    assert parts[0] == "annotation" and parts[1] in {name for name, _ in ROOMS}, f"{module} is in no room"
    return parts[1]


def arrows_against_the_rooms(graph: dict[str, set[str]]) -> list[str]:
    order = {name: rank for rank, (name, _) in enumerate(ROOMS)}
    wrong = []
    for source, targets in sorted(graph.items()):
        if not source.startswith("annotation"):
            continue
        room = room_of(source)
        for target in sorted(targets):
            if target.startswith("annotation"):
                if target in APP_FILES - {"annotation", "annotation.models"} and room is not None:
                    wrong.append(f"{source} -> {target} (an app file)")
                elif target not in APP_FILES and room is not None and order[str(room_of(target))] > order[room]:
                    wrong.append(f"{source} -> {target} ({room} may not import {room_of(target)})")
            elif target.startswith("testbed") and room != "management" and not target.startswith(TESTBED_FOR_ROOMS):
                wrong.append(f"{source} -> {target} (the test bed)")
    return wrong


def test_annotation_holds_only_the_apps_files_at_its_top_level_and_every_module_is_in_a_room() -> None:
    top = {path.stem for path in (REPO / "annotation").glob("*.py")}
    assert top == {"__init__", "apps", "models", "admin", "urls"}
    rooms = {path.name for path in (REPO / "annotation").iterdir() if (path / "__init__.py").exists()}
    assert rooms == {name for name, _ in ROOMS} | {"migrations"}
    for name in rooms - {"management", "migrations"}:
        assert (REPO / "annotation" / name / "__init__.py").read_text().startswith('"""'), f"{name} says what it holds"


def test_each_room_imports_only_the_rooms_below_it() -> None:
    graph = import_graph()
    assert {room_of(m) for m in graph if m.startswith("annotation")} >= {name for name, _ in ROOMS}
    assert arrows_against_the_rooms(graph) == []


def test_the_room_check_finds_an_arrow_the_other_way() -> None:
    graph = {
        "annotation.rules.errors": set(),
        "annotation.labeling.queue": {"annotation.rules.errors"},
        "annotation.rules.roles": {"annotation.labeling.queue"},
        "annotation.loop.training": {"testbed.tiny", "testbed.toyworld.world"},
        "annotation.management.commands.demo": {"testbed.demo.steps", "annotation.loop.training"},
        "annotation.web.pages": {"annotation.urls"},
    }
    assert arrows_against_the_rooms(graph) == [
        "annotation.loop.training -> testbed.tiny (the test bed)",
        "annotation.rules.roles -> annotation.labeling.queue (rules may not import labeling)",
        "annotation.web.pages -> annotation.urls (an app file)",
    ]


# Names that repeat by convention: Django's `urls` (the project's and the app's), and `cli`,
# each package's command line (`python -m rlhf.cli`, `python -m models.cli`). A management
# command's file is its public name, and a benchmark is named for what it measures: neither
# is a module anything imports by name.
SHARED_NAMES = {"__init__", "urls", "cli"}


def repeated_names() -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for package in ("annotation", "contract", "factloop", "models", "rlhf", "testbed", "webapp"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).parts
            if "migrations" in parts or "commands" in parts or path.stem in SHARED_NAMES:
                continue
            seen.setdefault(path.stem, []).append("/".join(parts))
        for path in sorted((REPO / package).rglob("*/")):
            if (path / "__init__.py").exists() and "migrations" not in path.parts:
                seen.setdefault(path.name, []).append("/".join(path.relative_to(REPO).parts) + "/")
    return {name: paths for name, paths in seen.items() if len(paths) > 1}


def test_no_two_modules_share_a_name() -> None:
    assert repeated_names() == {}
