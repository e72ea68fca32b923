"""Every variable settings.py reads is documented in docs/settings.md and deploy/.env.example."""

from __future__ import annotations

import re

from tests.conftest import FACTLOOP_VARS, REPO

READ = re.compile(r'env\.(?:text|flag|integer|csv|path|choice|rate)\(\s*"([A-Z_]+)"')


def variables_read_by_settings() -> set[str]:
    return set(READ.findall((REPO / "webapp" / "settings.py").read_text()))


def test_settings_reads_the_expected_variables() -> None:
    names = variables_read_by_settings()
    assert {
        "DATABASE_URL",
        "CELERY_BROKER_URL",
        "SECRET_KEY",
        "ALLOWED_HOSTS",
        "MEDIA_ROOT",
        "FACTLOOP_MODEL_DIR",
    } <= names


def test_every_variable_is_documented() -> None:
    names = variables_read_by_settings()
    readme = (REPO / "docs" / "settings.md").read_text()
    example = (REPO / "deploy" / ".env.example").read_text()
    assert sorted(name for name in names if f"`{name}`" not in readme) == []
    assert sorted(name for name in names if not re.search(rf"^{name}=", example, flags=re.M)) == []
    # Child processes in the tests start from an environment without any of them.
    assert sorted(names - set(FACTLOOP_VARS)) == []
