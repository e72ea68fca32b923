"""Jobs whose worker dies are taken back: the heartbeat, the sweeper (at a worker's start-up
and by age), retry and cancel by hand, and staging folders of dead writers removed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from rest_framework.test import APIClient

from annotation.jobs import lifecycle as jobs
from annotation.models import Job
from models.staging import remove_dead, staged, staging_path
from tests.factories import make_job

CaptureCallbacks = Callable[..., AbstractContextManager[list[Callable[[], Any]]]]


def running(kind: Job.Kind = Job.Kind.EXPORT, *, worker: str = "celery@a", age: float = 0, attempts: int = 1) -> Job:
    job = make_job(kind=kind, queue="export")
    assert Job.claim(job.pk, worker) is not None
    stamp = timezone.now() - timedelta(seconds=age)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=stamp, started_at=stamp, attempts=attempts)
    job.refresh_from_db()
    return job


@pytest.mark.django_db
def test_a_claim_counts_the_attempt_and_stamps_the_heartbeat() -> None:
    job = make_job()
    claim = Job.claim(job.pk, "celery@a")
    assert claim is not None
    job.refresh_from_db()
    assert job.attempts == 1 and job.heartbeat_at is not None
    assert Job.beat(job.pk, claim) is True
    assert Job.beat(job.pk, "another claim") is False  # not its job


@pytest.mark.django_db
def test_the_sweeper_queues_again_a_resumable_job_whose_heartbeat_stopped(
    settings: Any, django_capture_on_commit_callbacks: CaptureCallbacks
) -> None:
    settings.FACTLOOP_JOB_STALE_SECONDS = 120
    silent = running(Job.Kind.EXPORT, age=600)
    alive = running(Job.Kind.EXPORT, age=5)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        report = jobs.sweep()
    assert report.requeued == [silent.pk] and report.failed == []
    assert len(callbacks) == 1  # a new message for the job, sent once the sweep commits
    silent.refresh_from_db()
    assert (silent.status, silent.worker, silent.started_at, silent.heartbeat_at) == ("queued", "", None, None)
    assert silent.history[-1]["event"] == "requeued" and "heartbeat" in silent.history[-1]["reason"]
    alive.refresh_from_db()
    assert alive.status == Job.Status.RUNNING
    # The requeued job is claimed afresh; the old message, redelivered later, finds it taken.
    assert Job.claim(silent.pk, "celery@b") is not None and Job.claim(silent.pk, "celery@a") is None


@pytest.mark.django_db
def test_the_sweeper_fails_what_cannot_resume_or_has_used_its_attempts(settings: Any) -> None:
    settings.FACTLOOP_JOB_MAX_ATTEMPTS = 3
    check = running(Job.Kind.HEALTHCHECK, age=600)
    tired = running(Job.Kind.GENERATE, age=600, attempts=3)
    report = jobs.sweep()
    assert sorted(report.failed) == sorted([check.pk, tired.pk]) and report.requeued == []
    for job in (check, tired):
        job.refresh_from_db()
        assert job.status == Job.Status.FAILED and job.finished_at is not None
        assert job.error.startswith("lost: its worker stopped its heartbeat") and "retry it" in job.error
    assert "after 3 attempts" in tired.error


@pytest.mark.django_db
def test_a_worker_starting_up_takes_back_its_own_jobs_only() -> None:
    mine = running(Job.Kind.TRAIN, worker="celery@a")  # a fresh heartbeat: the worker died a moment ago
    theirs = running(Job.Kind.TRAIN, worker="celery@b")
    report = jobs.sweep(worker="celery@a")
    assert report.requeued == [mine.pk]
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert mine.status == Job.Status.QUEUED and "restarted" in mine.history[-1]["reason"]
    assert theirs.status == Job.Status.RUNNING


@pytest.mark.django_db
def test_a_job_claimed_again_is_no_longer_the_first_run_s() -> None:
    """A sibling process (or a restarted worker) that claims a requeued job holds it alone:
    the first run's beats, reports and finish find it lost, even under the same worker name."""
    job = running(Job.Kind.EXPORT, worker="export@host", age=600)
    first = job.claim_token
    jobs.sweep()  # its heartbeat looked stale: queued again
    second = Job.claim(job.pk, "export@host")
    assert second is not None and second != first
    assert Job.beat(job.pk, first) is False
    with pytest.raises(jobs.JobLost):
        jobs.reporter(job.pk, first)(1, 2)
    assert Job.succeed(job.pk, first, {"stale": True}) is False and Job.fail(job.pk, "stale", first) is False
    assert Job.beat(job.pk, second, progress=(1, 2)) and Job.succeed(job.pk, second, {"ok": True})
    job.refresh_from_db()
    assert (job.status, job.result, job.progress_done) == ("succeeded", {"ok": True}, 1)


def test_every_shipped_worker_command_names_its_worker() -> None:
    """The start-up sweep takes back the jobs recorded under the worker's own name, so two
    workers on one host must never share one (Celery's default is celery@host for all)."""
    import re

    from tests.conftest import REPO
    from webapp.celery import worker_command

    commands = [" ".join(worker_command("python", (queue,))) for queue in ("generate", "export")]
    for path in ("docs/deploy.md", "deploy/compose.yaml", "deploy/k8s/workers.yaml"):
        text = (REPO / path).read_text()
        lines = [line for line in text.splitlines() if re.search(r"celery\W+(-A\W+webapp\W+)?worker", line)]
        commands += lines
        assert lines, f"{path} starts no worker"
    names = []
    for command in commands:
        found = re.search(r"""(?:-n|--hostname)\W+([^\s"',\]]+)""", command)
        assert found, f"a worker command without -n: {command.strip()}"
        names.append(found.group(1))
    assert len(set(names)) >= 3 and all(name.endswith("@%h") for name in names), names


@pytest.mark.django_db
def test_retry_and_cancel_follow_the_lifecycle(
    admin_user: User, django_capture_on_commit_callbacks: CaptureCallbacks
) -> None:
    job = make_job(kind=Job.Kind.EXPORT, queue="export")
    with pytest.raises(jobs.JobStateError, match="only a failed or cancelled job can be retried"):
        jobs.retry(job.pk)
    jobs.cancel(job.pk, by=admin_user)
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.error == "cancelled by ada" and job.finished_at
    assert Job.claim(job.pk, "celery@a") is None  # a cancelled job never starts
    with pytest.raises(jobs.JobStateError, match="only a queued or running job can be cancelled"):
        jobs.cancel(job.pk)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        jobs.retry(job.pk, by=admin_user)
    assert len(callbacks) == 1
    job.refresh_from_db()
    assert (job.status, job.error, job.finished_at, job.attempts) == ("queued", "", None, 0)
    assert [event["event"] for event in job.history] == ["cancelled", "retried"]
    assert job.history[-1]["by"] == "ada"
    claim = Job.claim(job.pk, "celery@a")
    assert claim is not None and Job.succeed(job.pk, claim, {})
    with pytest.raises(jobs.JobStateError):
        jobs.retry(job.pk)  # a job that succeeded stays done


@pytest.mark.django_db
def test_a_running_task_stops_at_its_next_progress_report_once_cancelled() -> None:
    job = running(Job.Kind.EXPORT)
    report = jobs.reporter(job.pk, job.claim_token)
    report(1, 10)
    jobs.cancel(job.pk)
    with pytest.raises(jobs.JobLost):
        report(2, 10)
    assert Job.succeed(job.pk, job.claim_token, {"late": True}) is False  # what it would have written is dropped
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED and job.progress_done == 1


@pytest.mark.django_db(transaction=True)
def test_the_heartbeat_stamps_the_row_and_notices_a_lost_job() -> None:
    job = running(Job.Kind.EXPORT, age=600)
    before = job.heartbeat_at
    assert before is not None

    def stamp() -> Any:
        return Job.objects.get(pk=job.pk).heartbeat_at

    with jobs.Heartbeat(job.pk, job.claim_token, every=0.05) as heartbeat:
        deadline = time.monotonic() + 10
        while stamp() == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stamp() > before
        jobs.cancel(job.pk)
        assert heartbeat.lost.wait(10)


def test_the_admin_api_retries_and_cancels(admin_user: User, annotator: User) -> None:
    job = make_job(kind=Job.Kind.EXPORT, queue="export")
    api = APIClient()
    api.force_authenticate(annotator)
    assert api.post(f"/api/admin/jobs/{job.pk}/cancel/").status_code == 403
    api.force_authenticate(admin_user)
    assert api.post(f"/api/admin/jobs/{job.pk}/retry/").status_code == 409
    cancelled = api.post(f"/api/admin/jobs/{job.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    conflict = api.post(f"/api/admin/jobs/{job.pk}/cancel/")
    assert conflict.status_code == 409 and "only a queued or running job" in conflict.json()["detail"]
    retried = api.post(f"/api/admin/jobs/{job.pk}/retry/").json()
    assert retried["status"] == "queued" and [e["event"] for e in retried["history"]] == ["cancelled", "retried"]
    assert api.post("/api/admin/jobs/999999/retry/").status_code == 404


def test_the_job_admin_retries_and_cancels_by_action(admin_user: User) -> None:
    from django.test import Client

    done = make_job()
    waiting = make_job(kind=Job.Kind.EXPORT, queue="export")
    Job.succeed(done.pk, Job.claim(done.pk, "w") or "", {})
    client = Client()
    client.force_login(admin_user)
    page = client.post(
        "/admin/annotation/job/",
        {"action": "cancel_jobs", "_selected_action": [done.pk, waiting.pk]},
        follow=True,
    )
    assert page.status_code == 200
    text = page.content.decode()
    assert f"Cancelled: job(s) {waiting.pk}." in text and "only a queued or running job can be cancelled" in text
    assert Job.objects.get(pk=waiting.pk).status == Job.Status.CANCELLED
    client.post("/admin/annotation/job/", {"action": "retry_jobs", "_selected_action": [waiting.pk]})
    assert Job.objects.get(pk=waiting.pk).status == Job.Status.QUEUED


def test_staging_folders_of_dead_writers_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    out = tmp_path / "job-7-trl"
    mine = staging_path(out)  # this process: alive
    theirs = Path(str(staging_path(out)).replace(f"-{os.getpid()}-", f"-{dead_pid}-"))
    elsewhere = tmp_path / f".job-7-trl.partial-otherhost-{dead_pid}-0123abcd"  # another machine's writer
    for folder in (mine, theirs, elsewhere):
        (folder / "labels").mkdir(parents=True)
    assert remove_dead(tmp_path) == [theirs]
    assert mine.exists() and elsewhere.exists() and not theirs.exists()


def test_another_host_s_staging_folder_goes_once_untouched_for_long(tmp_path: Path) -> None:
    """A pod that died on a shared volume cannot be asked about its writer: its folder goes
    once nothing in it changed for the given time; a live writer elsewhere keeps its own."""
    old = tmp_path / ".job-8-trl.partial-gone_pod-41-0123abcd"
    live = tmp_path / ".job-9-trl.partial-busy_pod-42-89abcdef"
    for folder in (old, live):
        (folder / "labels").mkdir(parents=True)
        (folder / "labels" / "part.jsonl").write_text("{}")
    long_ago = time.time() - 3 * 24 * 3600
    for path in (old, old / "labels", old / "labels" / "part.jsonl", live, live / "labels"):
        os.utime(path, (long_ago, long_ago))  # live's file stays fresh: its writer is at work
    assert remove_dead(tmp_path) == []  # without a time, other hosts' folders are left alone
    assert remove_dead(tmp_path, other_hosts_after=24 * 3600) == [old]
    assert live.exists() and not old.exists()


def test_a_staged_write_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged(tmp_path / "out") as staging:
        (staging / "half").write_text("x")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with staged(tmp_path / "out") as staging:
        (staging / "whole").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out" / "whole").exists()
    with pytest.raises(FileExistsError), staged(tmp_path / "out"):
        pass


def test_celery_beat_runs_the_sweeper_and_the_demo_worker_runs_beat(tmp_path: Path) -> None:
    from django.conf import settings

    import annotation.worker.tasks  # noqa: F401  (registers the tasks)
    from webapp.celery import app, worker_command

    entry = app.conf.beat_schedule["sweep-jobs"]
    assert entry["task"] == "annotation.sweep_jobs" and entry["task"] in app.tasks
    assert entry["schedule"] == settings.FACTLOOP_JOB_SWEEP_SECONDS
    command = worker_command("python", beat_schedule=tmp_path / "beat")
    assert command[-3:] == ["--beat", "--schedule", str(tmp_path / "beat")]
