"""Fixtures of the annotation tests that run real worker processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from tests.conftest import database_url
from tests.webapp.test_celery_worker import purge_queues
from tests.workers import Worker


@pytest.fixture
def worker_env(settings: Any, tmp_path: Path) -> dict[str, str]:
    """The worker's environment: the test database and this test's folders."""
    if not settings.DATABASES["default"]["ENGINE"].endswith("postgresql"):
        pytest.skip("the worker tests run on PostgreSQL")
    purge_queues()
    settings.FACTLOOP_EXPORT_DIR = str(tmp_path / "exports")
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    settings.FACTLOOP_TRAIN_DIR = str(tmp_path / "training")
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(connection.settings_dict),
        FACTLOOP_EXPORT_DIR=settings.FACTLOOP_EXPORT_DIR,
        FACTLOOP_MODEL_DIR=settings.FACTLOOP_MODEL_DIR,
        FACTLOOP_TRAIN_DIR=settings.FACTLOOP_TRAIN_DIR,
        MEDIA_ROOT=settings.MEDIA_ROOT,
    )
    return env


@pytest.fixture
def worker(worker_env: dict[str, str], tmp_path: Path) -> Iterator[Worker]:
    process = Worker(worker_env, tmp_path / "worker.log")
    yield process
    process.stop()
