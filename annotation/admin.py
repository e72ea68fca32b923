from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html

from annotation.models import Job


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Jobs are written by workers only: the admin watches them."""

    list_display = ["id", "kind", "queue", "status", "progress", "worker", "created_at", "duration"]
    list_filter = ["status", "kind", "queue"]
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Job._meta.fields] + ["progress", "duration"]

    @admin.display(description="progress")
    def progress(self, job: Job) -> str:
        percent = job.progress_percent
        if percent is None:
            return "-"
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}',
            job.progress_total,
            job.progress_done,
            job.progress_done,
            job.progress_total,
        )

    @admin.display(description="duration (s)")
    def duration(self, job: Job) -> str:
        seconds = job.duration_seconds
        return "-" if seconds is None else f"{seconds:.1f}"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Job | None = None) -> bool:
        return False
