"""Celery tasks. Each takes a job id, claims its Job row, runs under a heartbeat, calls a
service and records the outcome (annotation/jobs/lifecycle.py).

A task is safe to run twice: a second delivery finds the job no longer `queued` and does
nothing. A task whose job is cancelled or taken back while it runs stops at its next
progress report and writes nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from celery import Task, shared_task
from celery.signals import worker_ready
from django.db import connection
from django.utils import timezone

from annotation.data import archives
from annotation.data.exporters import Selection, count_labels, export
from annotation.data.importers import ImportFailed
from annotation.jobs import lifecycle as jobs
from annotation.loop.deployment import serving_client
from annotation.loop.generation import generate_round
from annotation.loop.training import StepFailed, TrainingRefused, run_steps
from annotation.models import Job, TrainingRun
from annotation.rules.errors import Refused
from models.registry import Registry
from models.serving import ServingError

log = logging.getLogger(__name__)


class JobFailed(Exception):
    """The job cannot be done; the message is recorded as its error."""


Body = Callable[[Task, int, dict[str, Any], Callable[[int, int], None]], dict[str, Any]]


def job_task(kind: Job.Kind) -> Callable[[Body], Task]:
    """A Celery task named after the job kind (jobs.task_name) around `body(task, job_id,
    params, progress) -> result`: claim, heartbeat, then succeed, or fail on JobFailed."""

    def register(body: Body) -> Task:
        def run(self: Task, job_id: int) -> None:
            worker = self.request.hostname or socket.gethostname()
            claim = Job.claim(job_id, worker, kind)
            if claim is None:
                log.info("%s job %s: not queued (already run, gone or cancelled); skipping", kind, job_id)
                return
            params = Job.objects.values_list("params", flat=True).get(pk=job_id)
            with jobs.Heartbeat(job_id, claim) as heartbeat:
                try:
                    result = body(self, job_id, params, jobs.reporter(job_id, claim, heartbeat))
                except JobFailed as error:
                    Job.fail(job_id, str(error), claim)
                    return
                except jobs.JobLost as lost:
                    log.warning("%s job %s: %s; stopping", kind, job_id, lost)
                    return
            if not Job.succeed(job_id, claim, result):
                log.warning("%s job %s: no longer this run's (cancelled or taken back); result dropped", kind, job_id)

        run.__name__ = run.__qualname__ = body.__name__
        run.__doc__ = body.__doc__
        task: Task = shared_task(bind=True, name=jobs.task_name(kind))(run)
        return task

    return register


@job_task(Job.Kind.HEALTHCHECK)
def run_healthcheck(
    self: Task, job_id: int, params: dict[str, Any], progress: Callable[[int, int], None]
) -> dict[str, Any]:
    """Proves that a worker consumes the job's queue and reaches the database."""
    delivery = self.request.delivery_info or {}
    progress(1, 1)
    return {
        "worker": self.request.hostname or socket.gethostname(),
        "pid": os.getpid(),
        "queue": delivery.get("routing_key", ""),
        "database": connection.vendor,
        "broker": str(self.app.conf.broker_url).split(":", 1)[0],
    }


@job_task(Job.Kind.GENERATE)
def generate_candidates(
    self: Task, job_id: int, params: dict[str, Any], progress: Callable[[int, int], None]
) -> dict[str, Any]:
    """Fill a round's missing candidates from the serving model (annotation.loop.generation).

    Requests that fail after the client's retries mark their prompt failed and the others
    go on; the job fails only when no prompt could be done. Queue it again to fill the rest.
    """
    from django.conf import settings

    try:
        with serving_client() as client:
            report = generate_round(
                int(params["round_id"]),
                client=client,
                registry=Registry(settings.FACTLOOP_MODEL_DIR),
                concurrency=settings.FACTLOOP_GENERATE_CONCURRENCY,
                progress=progress,
            )
    except (Refused, ServingError) as error:
        raise JobFailed(str(error)) from error
    if report.failed and report.done == 0:
        raise JobFailed(f"no prompt could be generated: {next(iter(report.errors.values()))}")
    return report.as_dict()


@job_task(Job.Kind.EXPORT)
def export_dataset(
    self: Task, job_id: int, params: dict[str, Any], progress: Callable[[int, int], None]
) -> dict[str, Any]:
    """Write an export (annotation.data.exporters) under FACTLOOP_EXPORT_DIR/job-<id>-<format>,
    reporting progress per label read. The folder appears whole or not at all; a run taken
    back from a dead worker starts again (its staging folder is removed)."""
    from pathlib import Path

    from django.conf import settings

    try:
        selection = Selection(
            tuple(params["rounds"]),
            aggregate=params.get("aggregate", "none"),
            min_gold_accuracy=params.get("min_gold_accuracy"),
            include_gold=bool(params.get("include_gold", False)),
            ai_pairs=bool(params.get("ai_pairs", False)),
        )
        out = Path(settings.FACTLOOP_EXPORT_DIR) / f"job-{job_id}-{params['format']}"
        total = count_labels(selection)
        done = 0

        def counted(n: int) -> None:
            nonlocal done
            done += n
            # A write every 1% (or every label of a small export) keeps the job row cheap.
            if done == total or done % max(1, total // 100) == 0:
                progress(min(done, total), total)

        counts = export(params["format"], selection, out, progress=counted)
    except (KeyError, ValueError, FileExistsError, OSError) as error:
        raise JobFailed(str(error)) from error
    progress(total, total)
    return {"out": str(out), **counts}


@job_task(Job.Kind.TRAIN)
def train_round(
    self: Task, job_id: int, params: dict[str, Any], progress: Callable[[int, int], None]
) -> dict[str, Any]:
    """Run a training run's unfinished steps (annotation.loop.training), reporting the step
    reached as progress. A failed step leaves the run resumable (`train_round --resume`, or
    retrying the job); a run taken back from a dead worker resumes at its unfinished step."""

    run = TrainingRun.objects.get(pk=int(params["run_id"]))
    if run.status == TrainingRun.Status.FAILED:  # retried by hand: resume it
        TrainingRun.objects.filter(pk=run.pk).update(status=TrainingRun.Status.RUNNING, error="", finished_at=None)
        run.refresh_from_db()
    try:
        run = run_steps(run, progress=lambda step, done, total: progress(done, total))
    except (StepFailed, TrainingRefused) as error:
        raise JobFailed(str(error)) from error
    except jobs.JobLost:
        cancelled = Job.objects.filter(pk=job_id, status=Job.Status.CANCELLED).values_list("error", flat=True).first()
        if cancelled is not None:  # the run stops between steps and stays resumable
            TrainingRun.objects.filter(pk=run.pk, status=TrainingRun.Status.RUNNING).update(
                status=TrainingRun.Status.FAILED, error=cancelled, finished_at=timezone.now()
            )
        raise
    return {"run": run.pk, "version": run.version, "deployed": run.deployed}


@job_task(Job.Kind.IMPORT)
def import_archive(
    self: Task, job_id: int, params: dict[str, Any], progress: Callable[[int, int], None]
) -> dict[str, Any]:
    """Unpack and import an uploaded archive (annotation.data.archives), reporting progress over
    its rows. All or nothing: a bad row fails the job with every row named, unless the
    upload asked to skip bad rows; a cancel rolls the import back. The archive is removed
    once the import has ended for good; a lost or cancelled job keeps it for a retry."""
    from django.core.exceptions import ValidationError

    try:
        result = archives.run_import(params, progress)
    except ImportFailed as failed:
        archives.discard(params)
        rows = "; ".join(str(p) for p in failed.report.problems[:50])
        more = len(failed.report.problems) - 50
        raise JobFailed(
            f"{failed}: {rows}{f'; and {more} more' if more > 0 else ''}. "
            "Fix these rows, or upload it again with 'skip bad rows'."
        ) from failed
    except (ValidationError, ValueError, OSError) as error:
        archives.discard(params)
        message = "; ".join(error.messages) if isinstance(error, ValidationError) else str(error)
        raise JobFailed(message) from error
    archives.discard(params)
    return result


@shared_task(name="annotation.sweep_jobs")
def sweep_jobs() -> dict[str, Any]:
    """Celery beat's sweep: jobs whose worker stopped its heartbeat are taken back, and
    uploads no import needs any more are removed."""
    report = jobs.sweep()
    removed = archives.remove_stale_uploads()
    return {"requeued": report.requeued, "failed": report.failed, "uploads_removed": removed}


@worker_ready.connect
def _sweep_own_jobs(sender: Any = None, **_: Any) -> None:
    """A worker starting up takes back the jobs its earlier process held: that process died
    with them (SIGKILL, a lost machine), and the broker would redeliver their messages
    only after its visibility timeout."""
    hostname = getattr(sender, "hostname", None)
    if hostname:
        jobs.sweep(worker=hostname)
