"""Shared fixtures: the named people of every access rule, and helpers for processes that
must reach the test database (a Celery worker, the demo launcher)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from django.contrib.auth.models import User

from tests.factories import make_user

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# The env var names settings.py reads; a child process started with `clean_env()` sees
# none of the suite's, so it runs on the embedded defaults unless told otherwise.
FACTLOOP_VARS = (
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "MEDIA_ROOT",
    "FACTLOOP_MODEL_DIR",
    "FACTLOOP_VAR_DIR",
    "FACTLOOP_LEASE_MINUTES",
    "FACTLOOP_VLLM_URL",
    "FACTLOOP_VLLM_URLS",
    "FACTLOOP_AI_SPLITTER",
    "FACTLOOP_TRAIN_DIR",
    "FACTLOOP_GATE_METRIC",  # retired: settings refuse it
    "FACTLOOP_GATE_METRICS",
    "FACTLOOP_GATE_MARGIN",
    "FACTLOOP_GATE_PROTOCOL",
    "FACTLOOP_EVAL_ITEMS",
    "FACTLOOP_TRAIN_LAUNCHER",
    "FACTLOOP_ACCELERATE_CONFIG",
    "FACTLOOP_TRAIN_PROCESSES",
    "FACTLOOP_SERVING_PYTHON",
    "FACTLOOP_GENERATE_CONCURRENCY",
    "FACTLOOP_QC_MIN_GOLD_ACCURACY",
    "FACTLOOP_QC_MIN_AGREEMENT",
    "FACTLOOP_QC_MIN_ITEMS",
    "FACTLOOP_EXPORT_DIR",
    "FACTLOOP_JOB_HEARTBEAT_SECONDS",
    "FACTLOOP_JOB_STALE_SECONDS",
    "FACTLOOP_JOB_MAX_ATTEMPTS",
    "FACTLOOP_JOB_SWEEP_SECONDS",
    "FACTLOOP_LOGIN_FAILURE_LIMIT",
    "FACTLOOP_LOGIN_COOLOFF_MINUTES",
    "FACTLOOP_TOKEN_HOURS",
    "FACTLOOP_MAX_PROMPT_CHARS",
    "FACTLOOP_MAX_CONTEXT_CHARS",
    "FACTLOOP_MAX_FACTS_CHARS",
    "FACTLOOP_MAX_RESPONSE_CHARS",
    "FACTLOOP_DISTINCT_TRIES",
    "FACTLOOP_MAX_IMAGE_BYTES",
    "FACTLOOP_MAX_IMPORT_BYTES",
    "TIME_ZONE",
    "LOG_LEVEL",
    "DATA_UPLOAD_MAX_MEMORY_SIZE",
    "FACTLOOP_MAX_ANONYMOUS_BODY_BYTES",
    "FACTLOOP_MAX_MANIFEST_BYTES",
    "FACTLOOP_TRUSTED_PROXIES",
    "FACTLOOP_THROTTLE_ANONYMOUS",
    "FACTLOOP_THROTTLE_USER",
    "FACTLOOP_THROTTLE_EXPENSIVE",
    "CACHE_URL",
    "SECURE_COOKIES",
    "DJANGO_SETTINGS_MODULE",
)


# Set by the browser tests for their own process only.
TEST_ONLY_VARS = ("DJANGO_ALLOW_ASYNC_UNSAFE",)


def clean_env(**overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in FACTLOOP_VARS + TEST_ONLY_VARS}
    env.update(overrides)
    return env


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A DATABASE_URL naming the database a connection uses (the test database in tests)."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(settings_dict['NAME']).resolve()}"
    user = quote(settings_dict.get("USER") or "")
    password = quote(settings_dict.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
    return f"postgres://{auth}{settings_dict.get('HOST') or 'localhost'}{port}/{settings_dict['NAME']}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The people of the access rules.
@pytest.fixture
def annotator(db: None) -> User:
    return make_user("ann", "annotator")


@pytest.fixture
def second_annotator(db: None) -> User:
    return make_user("bea", "annotator")


@pytest.fixture
def admin_user(db: None) -> User:
    return make_user("ada", "admin")


@pytest.fixture
def outsider(db: None) -> User:
    return make_user("otto", None)


@pytest.fixture(scope="session", autouse=True)
def collected_static() -> None:
    """Pages render through the production static storage (hashed names from a manifest),
    so collect the files once, as a deployment does."""
    from django.conf import settings
    from django.core.management import call_command

    if not settings.DEBUG:
        call_command("collectstatic", interactive=False, verbosity=0)


@pytest.fixture(autouse=True)
def media_in_tmp(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Images the tests store go to a temporary folder, never to the checkout's var/."""
    settings.MEDIA_ROOT = str(tmp_path_factory.getbasetemp() / "media")


@pytest.fixture(autouse=True)
def fresh_throttles() -> None:
    """Throttle and lockout counts in the cache start empty in every test."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    # PBKDF2's many iterations cost ~0.3 s a user on this machine; tests check behaviour, not hashing strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


# The tiny model and a real vLLM server, each once per test session.


@pytest.fixture(scope="session")
def base_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny LLaVA shipped with the repository (testbed/tiny-base), so that no
    test can change the shipped files. A shipped model that is not a build of the current
    spec fails the session: rebuild it with `make tiny`."""
    import shutil

    from testbed.tiny import SHIPPED, TinySpec, problems

    found = problems(SHIPPED, TinySpec())
    if found:
        pytest.fail(f"the shipped tiny model is not a build of the current spec ({'; '.join(found)}): run `make tiny`")
    out = tmp_path_factory.mktemp("models") / "tiny-base"
    shutil.copytree(SHIPPED, out)
    return out


@pytest.fixture(scope="session")
def adapters(base_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two LoRA adapters of the tiny model that change what it says."""
    from tests.models.lora import random_adapter

    folder = tmp_path_factory.mktemp("adapters")
    return {name: random_adapter(base_policy, folder / name, seed=seed) for name, seed in (("a", 1), ("b", 2))}


@contextlib.contextmanager
def tiny_vllm_server(base_policy: Path, log_dir: Path) -> Iterator[Any]:
    """vLLM (the serving venv of `make serving`) serving the tiny model, LoRA enabled, on a
    free port; stopped (with every process it started) on the way out."""
    from django.conf import settings

    from models.server import ServerConfig, VLLMServer

    config = ServerConfig(
        model=str(base_policy),
        python=str(settings.FACTLOOP_SERVING_PYTHON),
        port=free_port(),
        log_path=log_dir / "server.log",
    )
    server = VLLMServer(config)
    server.start()
    try:
        server.wait_healthy(timeout=300)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(base_policy: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The session's vLLM server of the tiny model."""
    with tiny_vllm_server(base_policy, tmp_path_factory.mktemp("vllm")) as server:
        yield server


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database beside the test database (created by
    whoever uses it, e.g. `migrate`), dropped afterwards, even while the server is still
    coming back from a restart. Skips without PostgreSQL."""
    import time
    import uuid

    from django.db import connection

    settings_dict = dict(connection.settings_dict)
    if not settings_dict["ENGINE"].endswith("postgresql"):
        pytest.skip("the suite runs without PostgreSQL (DATABASE_URL is not postgres://)")
    settings_dict["NAME"] = f"{prefix}_{uuid.uuid4().hex[:8]}"
    url = database_url(settings_dict)
    try:
        yield url
    finally:
        import psycopg

        admin = url.rsplit("/", 1)[0] + "/postgres"
        for _ in range(30):
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{settings_dict["NAME"]}" WITH (FORCE)')
                break
            except psycopg.OperationalError:
                time.sleep(1)
