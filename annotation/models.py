"""FactLoop's data model. Rules about one row live here; workflows live in services.py."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class Job(models.Model):
    """One unit of background work run by a Celery worker, with its state and progress.

    The row is the source of truth (Celery keeps no results): the admin and the API show
    progress from it, and a task decides whether to run by claiming it. A claim is a
    conditional UPDATE from `queued` to `running`; only the process whose UPDATE matched the
    row goes on, so a message delivered twice runs the work once.
    """

    class Kind(models.TextChoices):
        HEALTHCHECK = "healthcheck", "Worker health check"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    kind = models.CharField(max_length=32, choices=Kind.choices)
    queue = models.CharField(max_length=32, help_text="The Celery queue the job was sent to.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    params = models.JSONField(default=dict, blank=True, help_text="The job's input, as given when queued.")
    result = models.JSONField(default=dict, blank=True, help_text="What the job reported when it finished.")
    error = models.TextField(blank=True, help_text="Why the job failed (empty unless failed).")
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, help_text="Host name of the worker that ran it.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(progress_done__lte=F("progress_total")) | Q(progress_total=0),
                name="job_progress_within_total",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["succeeded", "failed"], finished_at__isnull=False)
                | Q(status__in=["queued", "running"], finished_at__isnull=True),
                name="job_finished_at_iff_finished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} ({self.status})"

    @property
    def progress_percent(self) -> float | None:
        if not self.progress_total:
            return None
        return round(100.0 * self.progress_done / self.progress_total, 1)

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()

    # Single-row state changes. Each is one conditional UPDATE, so two processes racing on
    # the same job cannot both win, and the return value says whether this one did.

    @classmethod
    def claim(cls, job_id: int, worker: str) -> bool:
        """queued -> running. True only for the caller whose UPDATE changed the row."""
        updated = cls.objects.filter(pk=job_id, status=cls.Status.QUEUED).update(
            status=cls.Status.RUNNING, worker=worker[:255], started_at=timezone.now()
        )
        return updated == 1

    @classmethod
    def report_progress(cls, job_id: int, done: int, total: int) -> None:
        if total < 0 or done < 0 or (total and done > total):
            raise ValueError(f"progress {done}/{total} is out of range")
        cls.objects.filter(pk=job_id, status=cls.Status.RUNNING).update(progress_done=done, progress_total=total)

    @classmethod
    def succeed(cls, job_id: int, result: dict[str, Any]) -> bool:
        return (
            cls.objects.filter(pk=job_id, status=cls.Status.RUNNING).update(
                status=cls.Status.SUCCEEDED, result=result, finished_at=timezone.now()
            )
            == 1
        )

    @classmethod
    def fail(cls, job_id: int, error: str) -> bool:
        return (
            cls.objects.filter(pk=job_id, status__in=[cls.Status.QUEUED, cls.Status.RUNNING]).update(
                status=cls.Status.FAILED, error=error[:10_000], finished_at=timezone.now()
            )
            == 1
        )
