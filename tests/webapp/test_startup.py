"""Start-up with a bad environment stops with a message that names the variable, and the
committed migrations match the models."""

from __future__ import annotations

import subprocess

import pytest
from django.core.management import call_command

from tests.conftest import PYTHON, REPO, clean_env


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "manage.py", *args], cwd=REPO, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("env", "variable", "fragment"),
    [
        ({}, "SECRET_KEY", "is required but not set"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY", "at least 32 characters"),
        ({"SECRET_KEY": "k" * 40}, "ALLOWED_HOSTS", "is required when DEBUG is off"),
        ({"SECRET_KEY": "change-me-to-a-long-random-string-of-50-characters"}, "SECRET_KEY", "is an example value"),
        (
            {"SECRET_KEY": "replace-with-50-random-characters-replace-with-50-random"},
            "SECRET_KEY",
            "is an example value",
        ),
        (
            {
                "SECRET_KEY": "k" * 40,
                "ALLOWED_HOSTS": "x",
                "DATABASE_URL": "postgres://factloop:replace-me@db/factloop",
            },
            "DATABASE_URL",
            "its password is an example value",
        ),
        ({"DEBUG": "1", "FACTLOOP_THROTTLE_USER": "lots/minute"}, "FACTLOOP_THROTTLE_USER", "expected N/second"),
        ({"DEBUG": "1", "CACHE_URL": "memcached://x"}, "CACHE_URL", "expected redis://"),
        (
            {"DEBUG": "1", "FACTLOOP_JOB_STALE_SECONDS": "20", "FACTLOOP_JOB_HEARTBEAT_SECONDS": "15"},
            "FACTLOOP_JOB_STALE_SECONDS",
            "more than twice",
        ),
        ({"DEBUG": "perhaps"}, "DEBUG", "expected a boolean"),
        ({"DEBUG": "1", "DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL", "unsupported scheme 'mysql'"),
        ({"DEBUG": "1", "CELERY_BROKER_URL": "redis://"}, "CELERY_BROKER_URL", "names no host"),
        ({"DEBUG": "1", "DATA_UPLOAD_MAX_MEMORY_SIZE": "lots"}, "DATA_UPLOAD_MAX_MEMORY_SIZE", "expected an integer"),
        ({"DEBUG": "1", "LOG_LEVEL": "CHATTY"}, "LOG_LEVEL", "expected one of"),
        ({"DEBUG": "1", "FACTLOOP_GATE_METRICS": "chair_i,bleu"}, "FACTLOOP_GATE_METRICS", "gate metric 'bleu'"),
        ({"DEBUG": "1", "FACTLOOP_GATE_METRICS": "coverage:x"}, "FACTLOOP_GATE_METRICS", "gate margin 'x'"),
        ({"DEBUG": "1", "FACTLOOP_GATE_METRIC": "pope_f1"}, "FACTLOOP_GATE_METRIC", "is now FACTLOOP_GATE_METRICS"),
        ({"DEBUG": "1", "FACTLOOP_GATE_PROTOCOL": "mme"}, "FACTLOOP_GATE_PROTOCOL", "expected one of factloop, pope"),
        (
            {"DEBUG": "1", "FACTLOOP_GATE_PROTOCOL": "amber"},
            "FACTLOOP_GATE_PROTOCOL",
            "the amber protocol does not measure chair_i, coverage; its gate metrics are amber_chair",
        ),
        (
            {"DEBUG": "1", "FACTLOOP_GATE_PROTOCOL": "pope"},
            "FACTLOOP_GATE_PROTOCOL",
            "the pope protocol does not measure chair_i, coverage",
        ),
    ],
)
def test_bad_environment_stops_startup_naming_the_variable(env: dict[str, str], variable: str, fragment: str) -> None:
    result = manage("check", **env)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"factloop: configuration error: {variable}: ")
    assert fragment in line
    assert "Traceback" not in result.stderr


def test_good_production_environment_starts(tmp_path: pytest.TempPathFactory) -> None:
    result = manage(
        "check",
        "--deploy",
        "--fail-level",
        "ERROR",
        SECRET_KEY="s" * 50 + "-production-like-key",
        ALLOWED_HOSTS="factloop.example.org",
        DATABASE_URL=f"sqlite:///{tmp_path}/db.sqlite3",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/15",
    )
    assert result.returncode == 0, result.stderr


def test_migrations_match_the_models(db: None) -> None:
    # Raises SystemExit(1) when a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
