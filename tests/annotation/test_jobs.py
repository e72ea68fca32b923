"""Job rows: claims are exclusive, tasks are safe to run twice, queuing waits for commit,
and the admin API queues health checks with clean errors for bad input."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from rest_framework.test import APIClient

from annotation.jobs import lifecycle as jobs
from annotation.models import Job
from annotation.worker.tasks import run_healthcheck
from tests.factories import make_job

CaptureCallbacks = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


@pytest.mark.django_db
def test_only_one_claim_wins() -> None:
    job = make_job()
    claim = Job.claim(job.pk, "worker-a")
    assert claim is not None
    assert Job.claim(job.pk, "worker-b") is None
    job.refresh_from_db()
    assert job.status == Job.Status.RUNNING
    assert (job.worker, job.claim_token) == ("worker-a", claim)
    assert job.started_at is not None


@pytest.mark.django_db
def test_a_message_of_another_kind_claims_nothing() -> None:
    """A stale generation message whose id names a health check leaves it queued."""
    from annotation.worker.tasks import generate_candidates

    job = make_job(kind=Job.Kind.HEALTHCHECK, queue="generate")
    assert Job.claim(job.pk, "w", Job.Kind.GENERATE) is None
    generate_candidates.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.QUEUED
    assert Job.claim(job.pk, "w", Job.Kind.HEALTHCHECK) is not None


@pytest.mark.django_db
def test_state_changes_follow_the_lifecycle() -> None:
    job = make_job()
    assert Job.succeed(job.pk, "", {}) is False  # not running yet
    claim = Job.claim(job.pk, "w")
    assert claim is not None
    Job.report_progress(job.pk, claim, 3, 10)
    job.refresh_from_db()
    assert (job.progress_done, job.progress_total, job.progress_percent) == (3, 10, 30.0)
    with pytest.raises(ValueError, match="out of range"):
        Job.report_progress(job.pk, claim, 11, 10)
    assert Job.succeed(job.pk, claim, {"ok": True}) is True
    assert Job.fail(job.pk, "late failure") is False  # a finished job stays finished
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    assert job.finished_at is not None
    assert job.error == ""


@pytest.mark.django_db
def test_database_refuses_inconsistent_rows() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        make_job(progress_done=5, progress_total=2)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_job(status=Job.Status.SUCCEEDED)  # finished without finished_at


@pytest.mark.django_db
def test_healthcheck_task_is_safe_to_run_twice() -> None:
    job = make_job()
    run_healthcheck.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED
    first = (job.finished_at, job.result)
    run_healthcheck.apply(args=(job.pk,))
    job.refresh_from_db()
    assert (job.finished_at, job.result) == first
    # An id whose row is gone (a flushed database, a stale message) is ignored too.
    run_healthcheck.apply(args=(job.pk + 1000,))


@pytest.mark.django_db
def test_enqueue_sends_only_after_commit(django_capture_on_commit_callbacks: CaptureCallbacks) -> None:
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue="train")
    assert len(callbacks) == 1
    assert job.queue == "train"
    assert job.status == Job.Status.QUEUED


@pytest.mark.django_db
def test_enqueue_rejects_unknown_queue_and_writes_nothing() -> None:
    with pytest.raises(ValueError, match="unknown queue 'gpu'"):
        jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue="gpu")
    assert not Job.objects.exists()


def test_admin_api_queues_a_healthcheck(admin_user: User, django_capture_on_commit_callbacks: CaptureCallbacks) -> None:
    api = APIClient()
    api.force_authenticate(admin_user)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = api.post("/api/admin/jobs/healthcheck/", {"queue": "export"}, format="json")
    assert response.status_code == 201
    body = response.json()
    assert (body["kind"], body["queue"], body["status"], body["created_by"]) == (
        "healthcheck",
        "export",
        "queued",
        "ada",
    )
    assert len(callbacks) == 1
    detail = api.get(f"/api/admin/jobs/{body['id']}/")
    assert detail.status_code == 200
    listing = api.get("/api/admin/jobs/", {"status": "queued"}).json()
    assert listing["count"] == 1
    assert api.get("/api/admin/jobs/", {"status": "running"}).json()["count"] == 0


@pytest.mark.parametrize(
    ("payload", "field"),
    [({"queue": "gpu"}, "queue"), ({"queue": ["generate"]}, "queue")],
)
def test_admin_api_refuses_bad_input_and_writes_nothing(admin_user: User, payload: dict[str, Any], field: str) -> None:
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.post("/api/admin/jobs/healthcheck/", payload, format="json")
    assert response.status_code == 400
    assert field in response.json()
    assert not Job.objects.exists()


def test_admin_api_filters_are_validated(admin_user: User) -> None:
    api = APIClient()
    api.force_authenticate(admin_user)
    response = api.get("/api/admin/jobs/", {"status": "exploded"})
    assert response.status_code == 400
    assert "status" in response.json()
    assert api.get("/api/admin/jobs/999999/").status_code == 404


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queues": "gpu,train"}, "unknown queue"),
        ({"queues": " , "}, "none given"),
        ({"timeout": 0}, "--timeout must be positive"),
    ],
)
def test_check_worker_refuses_bad_options_and_queues_nothing(options: dict[str, Any], message: str) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match=message):
        call_command("check_worker", **options)
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"port": 0}, "--port"),
        ({"web_workers": 0}, "--web-workers"),
        ({"loop": True, "scenes": 0}, "--scenes"),
        ({"loop": True, "annotators": 0}, "--annotators"),
        ({"loop": True, "noise": 1.5}, "--noise"),
    ],
)
def test_demo_refuses_bad_options(options: dict[str, Any], message: str) -> None:
    from django.core.management import call_command
    from django.core.management.base import CommandError

    from annotation.models import Round

    with pytest.raises(CommandError, match=message):
        call_command("demo", **options)
    assert not Round.objects.exists()  # refused before anything was set up
