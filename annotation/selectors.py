"""Reads: querysets and waits used by views, APIs and commands."""

from __future__ import annotations

import time
from collections.abc import Iterable

from django.db.models import QuerySet

from annotation.models import Job


def jobs(*, status: str | None = None, kind: str | None = None) -> QuerySet[Job]:
    queryset = Job.objects.select_related("created_by")
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset


def wait_for_jobs(job_ids: Iterable[int], *, timeout: float, poll: float = 0.2) -> list[Job]:
    """Poll until every job has finished or `timeout` seconds have passed; return the rows."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = list(Job.objects.filter(pk__in=ids).order_by("pk"))
        if all(row.status in Job.FINISHED for row in rows) or time.monotonic() >= deadline:
            return rows
        time.sleep(poll)
