from __future__ import annotations

from functools import partial
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from annotation.administration import admin_pages
from annotation.jobs import lifecycle as jobs
from annotation.labeling.rounds import freeze_round
from annotation.loop.generation import queue_generation
from annotation.loop.training import STEPS
from annotation.models import (
    Assignment,
    AuditEvent,
    Correction,
    Dataset,
    Image,
    Job,
    Judgement,
    Prompt,
    Round,
    RoundPrompt,
    Task,
    TrainingRun,
    Vocabulary,
)


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    """Jobs are written by workers: the admin watches them, and retries or cancels them."""

    list_display = ["id", "kind", "queue", "status", "progress", "attempts", "worker", "created_at", "duration"]
    list_filter = ["status", "kind", "queue"]
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in Job._meta.fields] + ["progress", "duration", "download"]
    actions = ["retry_jobs", "cancel_jobs"]

    def _change_state(self, request: HttpRequest, queryset: Any, change: Any, verb: str) -> None:
        changed, refused = [], []
        for job_id in queryset.values_list("pk", flat=True):
            try:
                change(job_id, by=request.user)
                changed.append(str(job_id))
            except jobs.JobStateError as error:
                refused.append(str(error))
        if changed:
            self.message_user(request, f"{verb}: job(s) {', '.join(changed)}.", messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    @admin.action(description="Retry the selected failed or cancelled jobs")
    def retry_jobs(self, request: HttpRequest, queryset: Any) -> None:
        self._change_state(request, queryset, jobs.retry, "Queued again")

    @admin.action(description="Cancel the selected queued or running jobs")
    def cancel_jobs(self, request: HttpRequest, queryset: Any) -> None:
        self._change_state(request, queryset, jobs.cancel, "Cancelled")

    @admin.display(description="files")
    def download(self, job: Job) -> str:
        """A finished export's files, as one zip (the API streams it)."""
        if job.kind != Job.Kind.EXPORT or job.status != Job.Status.SUCCEEDED:
            return "-"
        return format_html(
            '<a href="{}">Download the export (zip)</a>', reverse("api-admin-job-download", args=[job.pk])
        )

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


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the annotation workflow: the admin looks, it does not edit."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Image)
class ImageAdmin(ReadOnlyAdmin):
    list_display = ["id", "source", "width", "height", "view", "created_at"]
    search_fields = ["source", "sha256"]
    # The file is served by the app's signed-in image view, never from MEDIA_URL.
    fields = ("view", "sha256", "width", "height", "source", "facts", "created_at")
    readonly_fields = fields

    @admin.display(description="image")
    def view(self, image: Image) -> str:
        return format_html('<a href="{}">{}</a>', reverse("image-file", args=[image.sha256]), image.sha256[:12])


@admin.register(Dataset)
class DatasetAdmin(ReadOnlyAdmin):
    """Held-out datasets (made by imports): what each holds and the vocabulary it is in."""

    list_display = ["name", "vocabulary", "prompt_count", "created_at"]
    fields = ("name", "vocabulary", "prompt_count", "created_at")
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).annotate(n=Count("prompts"))

    @admin.display(description="prompts", ordering="n")
    def prompt_count(self, dataset: Any) -> int:
        return int(dataset.n)


@admin.register(Vocabulary)
class VocabularyAdmin(ReadOnlyAdmin):
    """Object vocabularies registered with `register_vocabulary` (coco and toyworld are built in)."""

    list_display = ["name", "class_count", "created_at"]
    fields = ("name", "classes", "associations", "created_at")
    readonly_fields = fields

    @admin.display(description="classes")
    def class_count(self, vocabulary: Vocabulary) -> int:
        return len(vocabulary.classes)


@admin.register(Prompt)
class PromptAdmin(ReadOnlyAdmin):
    list_display = ["id", "text", "split", "dataset", "image", "created_at"]
    list_filter = ["split", "dataset"]
    list_select_related = ["image", "dataset"]
    search_fields = ["text"]
    change_list_template = "admin/annotation/prompt/change_list.html"

    def get_urls(self) -> list[Any]:

        view = self.admin_site.admin_view
        return [
            path("import/", view(partial(admin_pages.import_upload, self)), name="annotation_prompt_import"),
            *super().get_urls(),
        ]


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = [
        "number",
        "status",
        "policy_version",
        "heldout",
        "generation",
        "task_count",
        "progress",
        "quality_link",
        "created_at",
    ]
    list_filter = ["status"]
    readonly_fields = ["number", "created_at", "frozen_at"]
    actions = ["generate_missing", "freeze", "export"]
    change_list_template = "admin/annotation/round/change_list.html"

    def get_urls(self) -> list[Any]:

        view = self.admin_site.admin_view
        return [
            path("start/", view(partial(admin_pages.start_round, self)), name="annotation_round_start"),
            path(
                "register-model/",
                view(partial(admin_pages.register_model_page, self)),
                name="annotation_round_register_model",
            ),
            path("export/", view(partial(admin_pages.export_rounds, self)), name="annotation_round_export"),
            path("metrics/", view(partial(admin_pages.round_metrics, self)), name="annotation_round_metrics"),
            path(
                "<int:number>/quality/",
                view(partial(admin_pages.round_quality, self)),
                name="annotation_round_quality",
            ),
            path("<int:number>/train/", view(partial(admin_pages.train_round, self)), name="annotation_round_train"),
            path(
                "<int:number>/adjudicate/",
                view(partial(admin_pages.adjudicate, self)),
                name="annotation_round_adjudicate",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="quality")
    def quality_link(self, round_: Round) -> str:
        return format_html(
            '<a href="{}">report</a> · <a href="{}">adjudicate</a>',
            reverse("admin:annotation_round_quality", args=[round_.number]),
            reverse("admin:annotation_round_adjudicate", args=[round_.number]),
        )

    @admin.action(description="Freeze: take no more labels (the labels so far are final)")
    def freeze(self, request: HttpRequest, queryset: QuerySet[Round]) -> None:

        for round_ in queryset:
            try:
                freeze_round(round_)
            except ValidationError as error:
                self.message_user(request, " ".join(error.messages), level=messages.WARNING)
            else:
                self.message_user(request, f"{round_} is frozen.")

    @admin.action(description="Export the selected rounds (a job on the export queue)")
    def export(self, request: HttpRequest, queryset: QuerySet[Round]) -> HttpResponseRedirect:
        numbers = ",".join(str(n) for n in queryset.values_list("number", flat=True))
        return HttpResponseRedirect(f"{reverse('admin:annotation_round_export')}?rounds={numbers}")

    @admin.action(description="Generate the missing candidates (queued on the generate queue)")
    def generate_missing(self, request: HttpRequest, queryset: QuerySet[Round]) -> None:

        for round_ in queryset:
            try:
                job = queue_generation(round_, created_by=request.user)
            except ValidationError as error:
                self.message_user(request, " ".join(error.messages), level=messages.ERROR)
            else:
                self.message_user(request, f"{round_}: generation queued as job #{job.pk}.")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Round]:
        # Subqueries, not joins: counting over tasks and their assignments in one join
        # would multiply the sums.
        tasks = Task.objects.filter(round=OuterRef("pk")).order_by().values("round")
        submitted = Assignment.objects.filter(task__round=OuterRef("pk"), status=Assignment.Status.SUBMITTED)
        prompts = RoundPrompt.objects.filter(round=OuterRef("pk")).order_by().values("round")

        def count(queryset: QuerySet[Any]) -> Coalesce:
            return Coalesce(Subquery(queryset.annotate(n=Count("pk")).values("n")), 0)

        return (
            super()
            .get_queryset(request)
            .annotate(
                n_tasks=count(tasks),
                prompts_all=count(prompts),
                prompts_done=count(prompts.filter(status=RoundPrompt.Status.DONE)),
                prompts_failed=count(prompts.filter(status=RoundPrompt.Status.FAILED)),
                slots=Coalesce(Subquery(tasks.annotate(n=Sum("overlap")).values("n")), 0),
                done=count(submitted.order_by().values("task__round")),
            )
        )

    @admin.display(description="candidates (prompts done)")
    def generation(self, round_: Any) -> str:
        if not round_.prompts_all:
            return "-"
        failed = f" ({round_.prompts_failed} failed)" if round_.prompts_failed else ""
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}{}',
            round_.prompts_all,
            round_.prompts_done,
            round_.prompts_done,
            round_.prompts_all,
            failed,
        )

    @admin.display(description="tasks")
    def task_count(self, round_: Any) -> int:
        return int(round_.n_tasks)

    @admin.display(description="labels / needed")
    def progress(self, round_: Any) -> str:
        if not round_.slots:
            return "-"
        return format_html(
            '<progress max="{}" value="{}"></progress> {} / {}', round_.slots, round_.done, round_.done, round_.slots
        )


@admin.register(Task)
class TaskAdmin(ReadOnlyAdmin):
    list_display = ["id", "round", "kind", "prompt", "overlap", "taken", "submitted", "is_gold"]
    list_filter = ["round", "kind", "is_gold"]
    list_select_related = ["round", "prompt"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        done = Count("assignments", filter=Q(assignments__status=Assignment.Status.SUBMITTED))
        return super().get_queryset(request).annotate(n_submitted=done)

    @admin.display(description="submitted")
    def submitted(self, task: Any) -> int:
        return int(task.n_submitted)


@admin.register(Assignment)
class AssignmentAdmin(ReadOnlyAdmin):
    list_display = ["id", "task", "annotator", "status", "leased_at", "expires_at", "finished_at"]
    list_filter = ["status", "task__round"]
    list_select_related = ["task", "annotator"]


@admin.register(Judgement)
class JudgementAdmin(ReadOnlyAdmin):
    list_display = ["id", "assignment", "preferred", "rejected", "hallucination_tie", "rejected_hallucinates"]
    list_select_related = ["assignment", "preferred", "rejected"]


@admin.register(Correction)
class CorrectionAdmin(ReadOnlyAdmin):
    list_display = ["id", "assignment", "no_hallucination", "span_count", "created_at"]
    list_filter = ["no_hallucination"]
    list_select_related = ["assignment"]

    @admin.display(description="spans")
    def span_count(self, correction: Correction) -> int:
        return len(correction.spans)


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    """`train_round` runs: each step's status, time and outcome (annotation.loop.training)."""

    list_display = [
        "id",
        "round",
        "method",
        "status",
        "step_reached",
        "version",
        "deployed",
        "next_round",
        "created_at",
    ]
    list_filter = ["status", "method", "deployed"]
    readonly_fields = [field.name for field in TrainingRun._meta.fields] + ["step_table"]
    exclude = ["steps"]

    @admin.display(description="step")
    def step_reached(self, run: TrainingRun) -> str:
        unfinished = [name for name, entry in run.steps.items() if entry.get("status") != "done"]
        return unfinished[0] if unfinished else ("all done" if run.steps else "-")

    @admin.display(description="steps")
    def step_table(self, run: TrainingRun) -> str:

        rows = [
            (name, entry.get("status", ""), entry.get("seconds", ""), entry.get("detail") or entry.get("error", ""))
            for name in STEPS
            if (entry := run.steps.get(name)) is not None
        ]
        body = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>", rows)
        return format_html(
            "<table><tr><th>step</th><th>status</th><th>seconds</th><th>outcome</th></tr>{}</table>", body
        )


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log: append-only, for admins to read."""

    list_display = ["at", "actor_name", "action", "target", "detail"]
    list_filter = ["action"]
    search_fields = ["actor_name", "target"]
    date_hierarchy = "at"

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
