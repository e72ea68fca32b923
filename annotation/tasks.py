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
    if not Job.claim(job_id, worker):
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


_TASKS: dict[str, Task] = {Job.Kind.HEALTHCHECK: run_healthcheck}


def task_for_kind(kind: str) -> Task:
    try:
        return _TASKS[kind]
    except KeyError:
        raise ValueError(f"no task runs jobs of kind {kind!r}") from None
