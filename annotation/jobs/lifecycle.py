"""Background jobs: queued once their transaction commits, claimed by one worker, kept
alive by a heartbeat, and taken back when their worker dies.

A job row is the source of truth (annotation.models.Job). While a task runs, a heartbeat
thread stamps the row every FACTLOOP_JOB_HEARTBEAT_SECONDS. The sweeper (`sweep`) finds
running jobs whose worker is gone: at a worker's start-up, the jobs its earlier incarnation
held (it died with them); and periodically (Celery beat, `annotation.sweep_jobs`), any job
whose heartbeat is older than FACTLOOP_JOB_STALE_SECONDS. A resumable job (generation,
export, training: each picks up where the dead worker left off) is queued again with a new
message, up to FACTLOOP_JOB_MAX_ATTEMPTS claims; anything else is marked failed with the
reason. Staging folders the dead worker left are removed. The message the broker redelivers
later finds the job no longer queued and does nothing (claims are conditional UPDATEs).

Admins retry a failed or cancelled job, or cancel a queued or running one; a running task
notices at its next progress report (or heartbeat) and stops without writing a result.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from annotation.models import AuditEvent, Job
from annotation.rules import audit
from models.staging import ABANDONED_AFTER_SECONDS, remove_dead
from webapp.celery import QUEUES
from webapp.celery import app as celery_app

log = logging.getLogger(__name__)

# Work that is safe to start again: generation fills only the missing candidates, an
# export is staged and starts over, a training run resumes at its first unfinished step.
RESUMABLE = frozenset({Job.Kind.GENERATE, Job.Kind.EXPORT, Job.Kind.TRAIN})


class JobStateError(Exception):
    """The job is not in a state that allows the change (the message says why)."""


class JobLost(Exception):
    """The running job is no longer this worker's: cancelled, or taken back by the sweeper."""


def task_name(kind: str) -> str:
    """The Celery task that runs jobs of `kind` (annotation.worker.tasks registers them by name)."""
    if kind not in Job.Kind.values:
        raise ValueError(f"no task runs jobs of kind {kind!r}")
    return f"annotation.{kind}"


def _send_on_commit(job_id: int, kind: str, queue: str) -> None:
    name = task_name(kind)
    transaction.on_commit(lambda: celery_app.send_task(name, args=(job_id,), queue=queue))


def enqueue_job(kind: Job.Kind, *, queue: str, params: dict[str, Any] | None = None, created_by: Any = None) -> Job:
    """Create a Job row and send its task once the surrounding transaction commits.

    Sending on commit matters twice over: a worker never receives the id of a row it cannot
    see yet, and a rolled-back transaction sends nothing.
    """
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; expected one of {', '.join(QUEUES)}")
    task_name(kind)
    with transaction.atomic():
        job = Job.objects.create(kind=kind, queue=queue, params=params or {}, created_by=created_by)
        _send_on_commit(job.pk, kind, queue)
    return job


def _event(event: str, reason: str, by: Any = None) -> dict[str, Any]:
    return {
        "at": timezone.now().isoformat(timespec="seconds"),
        "event": event,
        "reason": reason,
        "by": getattr(by, "username", None) or "system",
    }


# ---------------------------------------------------------------------------------------
# While a task runs


class Heartbeat:
    """A thread that stamps the job's row every `every` seconds while the task runs, with a
    database connection of its own (closed when it stops). `lost` turns true when the row
    is no longer this worker's running job."""

    def __init__(self, job_id: int, claim: str, every: float | None = None) -> None:
        self.job_id = job_id
        self.claim = claim
        self.every = float(every if every is not None else settings.FACTLOOP_JOB_HEARTBEAT_SECONDS)
        self.lost = threading.Event()
        # The newest progress (see `reporter`): each beat writes it, which is how work inside
        # a transaction of its own shows its progress.
        self.pending: tuple[int, int] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.every + 10)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                try:
                    if not Job.beat(self.job_id, self.claim, progress=self.pending):
                        self.lost.set()
                except DatabaseError as error:  # a database restart: try again next beat
                    log.warning("job %s: heartbeat failed: %s", self.job_id, error)
                    close_old_connections()
        finally:
            connection.close()


def reporter(job_id: int, claim: str, heartbeat: Heartbeat | None = None) -> Callable[[int, int], None]:
    """A progress callback that raises JobLost once the job is no longer running here.

    Called inside a transaction the work opened (an import writes everything in one), it
    leaves the write to the heartbeat's own connection: an UPDATE of the job row from inside
    would lock the row until the commit, holding up a cancel and the heartbeat itself.
    """
    depth = len(connection.atomic_blocks)

    def report(done: int, total: int) -> None:
        lost = JobLost(f"job {job_id} is no longer running on this worker")
        if heartbeat is not None and heartbeat.lost.is_set():
            raise lost
        Job.check_progress(done, total)
        if heartbeat is not None:
            heartbeat.pending = (done, total)  # a beat only ever writes the newest figures
            if len(connection.atomic_blocks) > depth:
                return
        if not Job.report_progress(job_id, claim, done, total):
            raise lost

    return report


# ---------------------------------------------------------------------------------------
# Recovery


@dataclass
class SweepReport:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    staging_removed: list[str] = field(default_factory=list)


def sweep(*, worker: str | None = None, stale_after: float | None = None) -> SweepReport:
    """Take back the running jobs whose worker is gone.

    With `worker` (a worker starting up), the jobs that worker name holds: its earlier
    process died with them. Otherwise, every job whose heartbeat is older than
    `stale_after` seconds (default FACTLOOP_JOB_STALE_SECONDS). Safe to run from several
    processes at once: rows are locked and skipped when another sweeper holds them.
    """
    report = SweepReport()
    stale = float(stale_after if stale_after is not None else settings.FACTLOOP_JOB_STALE_SECONDS)
    cutoff = timezone.now() - timedelta(seconds=stale)
    with transaction.atomic():
        rows = Job.objects.select_for_update(skip_locked=True).filter(status=Job.Status.RUNNING)
        if worker is not None:
            rows = rows.filter(worker=worker[:255])
            why = f"its worker {worker} restarted while running it"
        else:
            rows = rows.filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
            why = f"its worker stopped its heartbeat for over {stale:.0f} s"
        for job in rows:
            holder = f"{why} (worker {job.worker or 'unknown'}, last heartbeat {job.heartbeat_at or job.started_at})"
            if job.kind in RESUMABLE and job.attempts < settings.FACTLOOP_JOB_MAX_ATTEMPTS:
                job.status, job.worker, job.claim_token = Job.Status.QUEUED, "", ""
                job.started_at, job.heartbeat_at = None, None
                job.history = [*job.history, _event("requeued", holder)]
                job.save(update_fields=["status", "worker", "claim_token", "started_at", "heartbeat_at", "history"])
                _send_on_commit(job.pk, job.kind, job.queue)
                report.requeued.append(job.pk)
            else:
                tries = f" after {job.attempts} attempts" if job.kind in RESUMABLE else ""
                job.status, job.finished_at = Job.Status.FAILED, timezone.now()
                job.error = f"lost: {holder}{tries}; retry it from the admin"
                job.history = [*job.history, _event("failed", job.error)]
                job.save(update_fields=["status", "finished_at", "error", "history"])
                report.failed.append(job.pk)
    # Another host's staging folder (a pod gone from a shared volume) once untouched for a day.
    export_dir = Path(settings.FACTLOOP_EXPORT_DIR)
    report.staging_removed = [str(p) for p in remove_dead(export_dir, other_hosts_after=ABANDONED_AFTER_SECONDS)]
    if report.requeued or report.failed or report.staging_removed:
        log.warning(
            "job sweep: requeued %s, failed %s, removed %s", report.requeued, report.failed, report.staging_removed
        )
    return report


def retry(job_id: int, *, by: Any = None) -> Job:
    """A failed or cancelled job, queued again (with a fresh budget of attempts)."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status not in (Job.Status.FAILED, Job.Status.CANCELLED):
            raise JobStateError(f"job {job_id} is {job.status}: only a failed or cancelled job can be retried")
        job.status, job.finished_at, job.error, job.attempts = Job.Status.QUEUED, None, "", 0
        job.worker, job.claim_token, job.started_at, job.heartbeat_at = "", "", None, None
        job.history = [*job.history, _event("retried", "retried by hand", by)]
        job.save()
        _send_on_commit(job.pk, job.kind, job.queue)
        audit.record(AuditEvent.Action.JOB, f"job {job.pk}", by=by, change="retried", kind=job.kind)
    return job


def cancel(job_id: int, *, by: Any = None, reason: str = "") -> Job:
    """A queued or running job, cancelled: a queued one never starts; a running one stops at
    its next progress report or heartbeat, and what it would have written is dropped."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.status not in (Job.Status.QUEUED, Job.Status.RUNNING):
            raise JobStateError(f"job {job_id} is {job.status}: only a queued or running job can be cancelled")
        why = reason or f"cancelled by {getattr(by, 'username', None) or 'system'}"
        job.status, job.finished_at, job.error = Job.Status.CANCELLED, timezone.now(), why
        job.history = [*job.history, _event("cancelled", why, by)]
        job.save(update_fields=["status", "finished_at", "error", "history"])
        audit.record(AuditEvent.Action.JOB, f"job {job.pk}", by=by, change="cancelled", kind=job.kind)
    return job
