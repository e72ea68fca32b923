"""Import boundaries: `models` and `rlhf` load neither Django nor torch; the web app loads no
torch. Each check runs in a fresh interpreter, so nothing imported by the test run leaks in."""

from __future__ import annotations

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
        "models",
        "rlhf",
        "rlhf.config",
        "rlhf.data",
        "rlhf.train_dpo",
        "rlhf.toy_pairs",
        "rlhf.cli",
        "rlhf.reward",
        "rlhf.losses",
        "rlhf.scoring",
        "rlhf.train_rl",
    ],
)
def test_model_side_packages_load_neither_django_nor_torch(package: str) -> None:
    assert loaded_after_import([package], ["django", "torch", "transformers", "trl", "datasets"]) == []


def test_web_app_loads_no_torch() -> None:
    setup = "import django; django.setup(); import webapp.urls, webapp.wsgi, annotation.tasks"
    loaded = loaded_after_import(["webapp"], ["torch", "transformers", "trl"], setup=setup)
    assert loaded == []
