"""Celery tasks. Each takes ids, claims its Job row, calls a service and records the outcome.

A task is safe to run twice: a second delivery finds the job no longer `queued` and does
nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from celery import Task, shared_task
from django.db import connection

from annotation.models import Job

log = logging.getLogger(__name__)


@shared_task(bind=True, name="annotation.healthcheck")
def run_healthcheck(self: Task, job_id: int) -> None:
    """Proves that a worker consumes the job's queue and reaches the database."""
    worker = self.request.hostname or socket.gethostname()
    if not Job.claim(job_id, worker, Job.Kind.HEALTHCHECK):
        log.info("healthcheck job %s: not queued (already run or gone); skipping", job_id)
        return
    delivery = self.request.delivery_info or {}
    result: dict[str, Any] = {
        "worker": worker,
        "pid": os.getpid(),
        "queue": delivery.get("routing_key", ""),
        "database": connection.vendor,
        "broker": str(self.app.conf.broker_url).split(":", 1)[0],
    }
    Job.report_progress(job_id, 1, 1)
    Job.succeed(job_id, result)


@shared_task(bind=True, name="annotation.generate_candidates")
def generate_candidates(self: Task, job_id: int) -> None:
    """Fill a round's missing candidates from the serving model (annotation.generation).

    Requests that fail after the client's retries mark their prompt failed and the others
    go on; the job fails only when no prompt could be done. Queue it again to fill the rest.
    """
    from django.conf import settings

    from annotation.generation import generate_round
    from annotation.queue import Refused
    from models.registry import Registry
    from models.serving import ServingClient, ServingError

    if not Job.claim(job_id, self.request.hostname or socket.gethostname(), Job.Kind.GENERATE):
        log.info("generation job %s: not queued (already run or gone); skipping", job_id)
        return
    round_id = int(Job.objects.values_list("params", flat=True).get(pk=job_id)["round_id"])
    try:
        with ServingClient(settings.FACTLOOP_VLLM_URL) as client:
            report = generate_round(
                round_id,
                client=client,
                registry=Registry(settings.FACTLOOP_MODEL_DIR),
                concurrency=settings.FACTLOOP_GENERATE_CONCURRENCY,
                progress=lambda done, total: Job.report_progress(job_id, done, total),
            )
    except (Refused, ServingError) as error:
        Job.fail(job_id, str(error))
        return
    if report.failed and report.done == 0:
        Job.fail(job_id, f"no prompt could be generated: {next(iter(report.errors.values()))}")
        return
    Job.succeed(job_id, report.as_dict())


@shared_task(bind=True, name="annotation.export_dataset")
def export_dataset(self: Task, job_id: int) -> None:
    """Write an export (annotation.exporters) under FACTLOOP_EXPORT_DIR/job-<id>-<format>,
    reporting progress per label read. The folder appears whole or not at all."""
    from pathlib import Path

    from django.conf import settings

    from annotation.exporters import Selection, count_labels, export

    if not Job.claim(job_id, self.request.hostname or socket.gethostname(), Job.Kind.EXPORT):
        log.info("export job %s: not queued (already run or gone); skipping", job_id)
        return
    params = Job.objects.values_list("params", flat=True).get(pk=job_id)
    try:
        selection = Selection(
            tuple(params["rounds"]),
            aggregate=params.get("aggregate", "none"),
            min_gold_accuracy=params.get("min_gold_accuracy"),
            include_gold=bool(params.get("include_gold", False)),
        )
        out = Path(settings.FACTLOOP_EXPORT_DIR) / f"job-{job_id}-{params['format']}"
        total = count_labels(selection)
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            # A write every 1% (or every label of a small export) keeps the job row cheap.
            if done == total or done % max(1, total // 100) == 0:
                Job.report_progress(job_id, min(done, total), total)

        counts = export(params["format"], selection, out, progress=progress)
    except (KeyError, ValueError, FileExistsError, OSError) as error:
        Job.fail(job_id, str(error))
        return
    Job.report_progress(job_id, total, total)
    Job.succeed(job_id, {"out": str(out), **counts})


@shared_task(bind=True, name="annotation.train_round")
def train_round(self: Task, job_id: int) -> None:
    """Run a training run's unfinished steps (annotation.training), reporting the step
    reached as progress. A failed step leaves the run resumable (`train_round --resume`)."""
    from annotation.models import TrainingRun
    from annotation.training import StepFailed, TrainingRefused, run_steps

    if not Job.claim(job_id, self.request.hostname or socket.gethostname(), Job.Kind.TRAIN):
        log.info("training job %s: not queued (already run or gone); skipping", job_id)
        return
    run = TrainingRun.objects.get(pk=int(Job.objects.values_list("params", flat=True).get(pk=job_id)["run_id"]))
    try:
        run = run_steps(run, progress=lambda step, done, total: Job.report_progress(job_id, done, total))
    except (StepFailed, TrainingRefused) as error:
        Job.fail(job_id, str(error))
        return
    Job.succeed(job_id, {"run": run.pk, "version": run.version, "deployed": run.deployed})


_TASKS: dict[str, Task] = {
    Job.Kind.HEALTHCHECK: run_healthcheck,
    Job.Kind.GENERATE: generate_candidates,
    Job.Kind.EXPORT: export_dataset,
    Job.Kind.TRAIN: train_round,
}


def task_for_kind(kind: str) -> Task:
    try:
        return _TASKS[kind]
    except KeyError:
        raise ValueError(f"no task runs jobs of kind {kind!r}") from None
