"""Celery with a real worker process: a task queued with transaction.on_commit runs in the
worker and writes a row that the test reads back.

The suite's broker (Redis under `make test`) and database (PostgreSQL) are the ones in the
environment; the worker gets the URL of the test database. A second test runs the embedded
default (SQLite + the filesystem broker) entirely in child processes, as `make demo` does.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from rest_framework.test import APIClient

from annotation.jobs import lifecycle as jobs
from annotation.models import Job
from annotation.rules import selectors
from tests.conftest import PYTHON, REPO, clean_env, database_url
from webapp.celery import QUEUES, worker_command
from webapp.celery import app as celery_app

pytestmark = pytest.mark.django_db(transaction=True)


def worker_args(*queues: str) -> list[str]:
    """The worker as the demo runs it (webapp.celery.worker_command), without Celery's own
    broker heartbeats (the filesystem broker has none)."""
    return [*worker_command(PYTHON, queues or QUEUES), "--without-heartbeat"]


def worker_env() -> dict[str, str]:
    """The suite's own settings, pointed at the test database."""
    import os

    env = dict(os.environ)
    env["DATABASE_URL"] = database_url(connection.settings_dict)
    return env


def purge_queues() -> None:
    # Messages left by an earlier run name rows that no longer exist; start clean.
    with celery_app.connection_for_write() as conn:
        channel: Any = conn.default_channel
        for name in QUEUES:
            # A queue that was never declared has nothing to purge.
            with contextlib.suppress(Exception):
                channel.queue_purge(name)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    purge_queues()
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(worker_args(), cwd=REPO, env=worker_env(), stdout=log, stderr=subprocess.STDOUT)
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def test_on_commit_task_runs_in_the_worker_and_writes_the_row(worker: subprocess.Popen[bytes]) -> None:
    with transaction.atomic():
        job = jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue="train")
        # Not sent yet: the worker cannot see this row until the transaction commits.
    [row] = selectors.wait_for_jobs([job.pk], timeout=60)
    assert row.status == Job.Status.SUCCEEDED, (row.status, row.error)
    assert row.result["queue"] == "train"
    assert row.result["database"] == connection.vendor
    assert row.result["broker"] == settings.CELERY_BROKER_URL.split(":", 1)[0]
    assert row.result["pid"] == worker.pid
    assert row.worker == f"{'-'.join(QUEUES)}@{socket.gethostname()}"  # worker_command names it


def test_rolled_back_transaction_sends_nothing(worker: subprocess.Popen[bytes]) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort), transaction.atomic():
        jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue="generate")
        raise Abort
    assert not Job.objects.exists()
    # The worker is alive and idle: a later job still runs, and only that one.
    job = jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue="generate")
    [row] = selectors.wait_for_jobs([job.pk], timeout=60)
    assert row.status == Job.Status.SUCCEEDED
    assert Job.objects.count() == 1


def test_every_queue_is_consumed_via_the_admin_api(worker: subprocess.Popen[bytes], admin_user: User) -> None:
    api = APIClient()
    api.force_authenticate(admin_user)
    ids = [api.post("/api/admin/jobs/healthcheck/", {"queue": q}, format="json").json()["id"] for q in QUEUES]
    rows = selectors.wait_for_jobs(ids, timeout=60)
    assert [row.status for row in rows] == [Job.Status.SUCCEEDED] * len(QUEUES)
    assert sorted(row.result["queue"] for row in rows) == sorted(QUEUES)
    detail = api.get(f"/api/admin/jobs/{ids[0]}/").json()
    assert detail["status"] == "succeeded"
    assert detail["progress_percent"] == 100.0


def test_embedded_default_sqlite_and_filesystem_broker(tmp_path: Path) -> None:
    """No PostgreSQL, no Redis: what `make demo` runs on."""
    env = clean_env(DEBUG="1", FACTLOOP_VAR_DIR=str(tmp_path / "var"))

    def manage(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )

    assert manage("migrate", "-v0").returncode == 0
    # No worker yet: the check times out and says so.
    lonely = manage("check_worker", "--queues", "export", "--timeout", "2")
    assert lonely.returncode == 1
    assert "did not answer" in lonely.stderr
    assert (tmp_path / "var" / "factloop.sqlite3").exists()

    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(worker_args(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        started = time.monotonic()
        answered = manage("check_worker", "--timeout", "60")
        assert answered.returncode == 0, answered.stdout + answered.stderr + (tmp_path / "worker.log").read_text()
        assert answered.stdout.count("database=sqlite broker=filesystem") == len(QUEUES)
        assert time.monotonic() - started < 60
        # The message left from the check without a worker was consumed, found its job
        # already marked failed, and did nothing: the row stays as it was.
        failed = manage(
            "shell",
            "-c",
            "from annotation.models import Job as J; "
            "print(J.objects.filter(status='failed').count(), J.objects.filter(status='succeeded').count())",
        )
        assert failed.stdout.strip().splitlines()[-1] == f"1 {len(QUEUES)}"
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
