"""The admin's own pages: start a round, import an upload, export as a job, the quality
report and adjudication of a round, and the metrics of every round as plots.

Each view is wrapped by `admin_site.admin_view` (staff only) in admin.py and checks the
permission the page needs. Text from annotators and models is escaped by the templates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from annotation.administration import inputs, plots
from annotation.administration.dashboard import (
    HALLUCINATION_METRICS,
    candidate_repeats,
    figure,
    hallucination_chart,
    version_rows,
)
from annotation.labeling import quality, rounds
from annotation.loop.deployment import RegisterRefused, policy_choices, register_model
from annotation.loop.training import TrainingRefused
from annotation.models import Candidate, Round, Task, TaskCandidate
from contract.methods import KL, REWARD
from models.registry import Registry


def _context(admin: Any, request: HttpRequest, title: str, **extra: Any) -> dict[str, Any]:
    return {**admin.admin_site.each_context(request), "opts": admin.model._meta, "title": title, **extra}


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


# ---------------------------------------------------------------------------------------
# Start a round


StartRoundForm = inputs.page_form(
    inputs.StartRoundInput,
    # Only what is registered, read when the form is drawn (the registry is on disk).
    choices={"policy_version": lambda: [(name, name) for name in policy_choices()]},
    initial={"task_kinds": [Task.Kind.RANK]},
)


class RegisterModelForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="The version name (letters, digits, '.', '_', '-').")
    model = forms.CharField(
        max_length=1024, help_text="A checkpoint folder on the server, or a hub id (organisation/name)."
    )
    adapter = forms.CharField(
        max_length=1024, required=False, help_text="Optionally, a LoRA adapter folder on the server."
    )


def register_model_page(admin: Any, request: HttpRequest) -> HttpResponse:
    _require(request, "annotation.add_round")
    form = RegisterModelForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            version = register_model(
                data["name"], data["model"], adapter=Path(data["adapter"]) if data["adapter"] else None, by=request.user
            )
        except RegisterRefused as error:
            form.add_error(None, str(error))
        else:
            messages.success(request, f"Registered {version.name} ({version.base_model}); a round can start from it.")
            return HttpResponseRedirect(reverse("admin:annotation_round_start"))
    return TemplateResponse(
        request, "admin/annotation/form_page.html", _context(admin, request, "Register a model", form=form)
    )


def start_round(admin: Any, request: HttpRequest) -> HttpResponse:
    _require(request, "annotation.add_round")
    form = StartRoundForm(request.POST or None)
    if request.method == "POST" and (
        data := inputs.validated(inputs.StartRoundInput, form, request.POST, request.FILES)
    ):
        try:
            round_, job = inputs.start(data, by=request.user)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(
                request,
                f"{round_} started over {round_.round_prompts.count()} prompts; generation is job #{job.pk}. "
                "It opens for annotation once every prompt has its candidates.",
            )
            return HttpResponseRedirect(reverse("admin:annotation_round_changelist"))
    return TemplateResponse(
        request, "admin/annotation/form_page.html", _context(admin, request, "Start a round", form=form)
    )


# ---------------------------------------------------------------------------------------
# Import an upload


ImportForm = inputs.page_form(inputs.ImportInput)


def import_upload(admin: Any, request: HttpRequest) -> HttpResponse:
    """Check and spool the upload, then import it as a background job (annotation.data.archives):
    the request unpacks nothing; the job's page shows its progress and any bad rows."""
    _require(request, "annotation.add_round")
    form = ImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and (data := inputs.validated(inputs.ImportInput, form, request.POST, request.FILES)):
        try:
            job = inputs.import_upload(data, by=request.user)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(
                request, f"The import is job #{job.pk}: a worker unpacks and checks it; this page shows its progress."
            )
            return HttpResponseRedirect(reverse("admin:annotation_job_change", args=[job.pk]))
    return TemplateResponse(
        request,
        "admin/annotation/form_page.html",
        _context(admin, request, "Import prompts or labels", form=form, multipart=True),
    )


# ---------------------------------------------------------------------------------------
# Export as a job


ExportForm = inputs.page_form(
    inputs.ExportInput,
    choices={
        "rounds": lambda: [(n, f"round {n}") for n in Round.objects.order_by("number").values_list("number", flat=True)]
    },
)


def export_rounds(admin: Any, request: HttpRequest) -> HttpResponse:
    _require(request, "annotation.view_round")
    initial = {"rounds": request.GET.get("rounds", "").split(",")} if request.GET.get("rounds") else {}
    form = ExportForm(request.POST or None, initial=initial)
    if request.method == "POST" and (data := inputs.validated(inputs.ExportInput, form, request.POST, request.FILES)):
        try:
            job = inputs.export(data, by=request.user)
        except ValidationError as error:
            form.add_error(None, error)
        else:
            messages.success(
                request, f"Export queued as job #{job.pk}; it is written under {settings.FACTLOOP_EXPORT_DIR}."
            )
            return HttpResponseRedirect(reverse("admin:annotation_job_change", args=[job.pk]))
    return TemplateResponse(
        request, "admin/annotation/form_page.html", _context(admin, request, "Export a dataset", form=form)
    )


# ---------------------------------------------------------------------------------------
# Quality and adjudication


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


TrainForm = inputs.page_form(inputs.TrainInput)


def train_round(admin: Any, request: HttpRequest, number: int) -> HttpResponse:
    """Train the round as a job (what `manage.py train_round` does): freeze, export, train,
    evaluate, gate, register, deploy, open the next round."""
    _require(request, "annotation.change_round")
    round_ = get_object_or_404(Round, number=number)
    form = TrainForm(request.POST or None)
    if request.method == "POST" and (data := inputs.validated(inputs.TrainInput, form, request.POST, request.FILES)):
        try:
            run = inputs.train(round_, data, by=request.user)
        except TrainingRefused as error:
            form.add_error(None, str(error))
        else:
            assert run.job is not None
            messages.success(request, f"Training {round_} is job #{run.job.pk} (run #{run.pk}).")
            return HttpResponseRedirect(reverse("admin:annotation_job_change", args=[run.job.pk]))
    return TemplateResponse(
        request, "admin/annotation/form_page.html", _context(admin, request, f"Train {round_}", form=form)
    )


def round_quality(admin: Any, request: HttpRequest, number: int) -> HttpResponse:
    _require(request, "annotation.view_round")
    round_ = get_object_or_404(Round, number=number)
    report = quality.round_quality([number])
    people = report.annotators
    chart = plots.bars(
        f"Round {number}: annotators",
        [s.annotator for s in people],
        {
            "gold accuracy": [s.gold_accuracy for s in people],
            "agreement with peers": [s.peer_agreement for s in people],
        },
    )
    rows = [
        {
            "name": s.annotator,
            "labels": s.labels,
            "gold": f"{_pct(s.gold_accuracy)} of {s.gold_labels}" if s.gold_labels else "-",
            "agreement": _pct(s.peer_agreement),
            "per_hour": "-" if s.tasks_per_hour is None else f"{s.tasks_per_hour:.0f}",
            "median": "-" if s.median_seconds is None else f"{s.median_seconds:.1f}",
            "flags": "; ".join(s.flags),
        }
        for s in people
    ]
    kappa = [
        {"kind": k, "a": a, "b": b, "n": n, "kappa": "-" if v is None else f"{v:.2f}"} for k, a, b, n, v in report.kappa
    ]
    alpha = {kind: "-" if v is None else f"{v:.2f}" for kind, v in report.alpha.items()}
    context = _context(
        admin,
        request,
        f"Quality of {round_}",
        round=round_,
        report=report,
        rows=rows,
        kappa=kappa,
        alpha=alpha,
        ai={key: _pct(getattr(report.ai, key)) for key in ("precision", "recall", "ranking_agreement")}
        if report.ai
        else None,
        chart=chart,
        candidates=candidate_repeats(round_),
        thresholds={
            "gold": settings.FACTLOOP_QC_MIN_GOLD_ACCURACY,
            "agreement": settings.FACTLOOP_QC_MIN_AGREEMENT,
            "items": settings.FACTLOOP_QC_MIN_ITEMS,
        },
    )
    return TemplateResponse(request, "admin/annotation/round_quality.html", context)


ADJUDICATE_PAGE = 50


class AdjudicateForm(forms.Form):
    task = forms.IntegerField(min_value=1, max_value=2**63 - 1)
    answer = forms.CharField(required=False, max_length=8)


def adjudicate(admin: Any, request: HttpRequest, number: int) -> HttpResponse:
    """Tasks whose annotators disagree, with every answer; an admin's answer is kept on the
    task (and later rounds draw their gold tasks from such answers)."""
    _require(request, "annotation.change_round")
    round_ = get_object_or_404(Round, number=number)
    if request.method == "POST":
        form = AdjudicateForm(request.POST)
        if not form.is_valid():
            messages.error(request, "No task was named.")
            return HttpResponseRedirect(request.path)
        task = get_object_or_404(Task, pk=form.cleaned_data["task"], round=round_)
        value = form.cleaned_data["answer"]
        if task.kind == Task.Kind.RANK:
            position = value if value.isascii() and value.isdecimal() else ""
            answer: dict[str, Any] = {"best_positions": [int(position)] if position else []}
        else:
            answer = {"no_hallucination": value == "ok"} if value in ("ok", "fix") else {}
        try:
            rounds.adjudicate(task, answer, by=request.user)
        except ValidationError as error:
            messages.error(request, f"Task #{task.pk}: {' '.join(error.messages)}")
        else:
            messages.success(request, f"Task #{task.pk}: answer recorded; it joins the gold pool of later rounds.")
        return HttpResponseRedirect(request.path)
    labels = quality.read_labels([number])
    by_task: dict[int, list[quality.Label]] = {}
    for label in labels:
        by_task.setdefault(label.task, []).append(label)
    disputed = [t for t, group in by_task.items() if len({label.value for label in group}) > 1]
    open_tasks = (
        Task.objects.filter(pk__in=disputed, adjudicated_at__isnull=True, is_gold=False)
        .select_related("prompt__image")
        .order_by("pk")[:ADJUDICATE_PAGE]
    )
    slots: dict[int, list[str]] = {}
    for slot in TaskCandidate.objects.filter(task__in=open_tasks).select_related("candidate").order_by("position"):
        slots.setdefault(slot.task_id, []).append(slot.candidate.text)
    items = []
    for task in open_tasks:
        letters = [chr(ord("A") + i) for i in range(len(slots.get(task.pk, [])))]
        choices: list[tuple[str, str]] = (
            [(str(i), letter) for i, letter in enumerate(letters)]
            if task.kind == Task.Kind.RANK
            else [("ok", "no hallucination"), ("fix", "needs a correction")]
        )
        answers = []
        for label in by_task[task.pk]:
            shown = letters[label.value] if isinstance(label.value, int) else label.value
            answers.append({"annotator": label.annotator, "answer": shown})
        items.append(
            {
                "task": task,
                "image_url": reverse("image-file", args=[task.prompt.image.sha256]),
                "candidates": list(zip(letters, slots.get(task.pk, []), strict=True)),
                "answers": answers,
                "choices": choices,
            }
        )
    context = _context(
        admin, request, f"Adjudicate {round_}", round=round_, items=items, disputed=len(disputed), page=ADJUDICATE_PAGE
    )
    return TemplateResponse(request, "admin/annotation/adjudicate.html", context)


# ---------------------------------------------------------------------------------------
# Metrics of every round

TRAINING_METRICS = (REWARD, KL)  # RunResult.registry_metrics: what train_round registers
MODEL_METRICS = HALLUCINATION_METRICS + TRAINING_METRICS


def round_metrics(admin: Any, request: HttpRequest) -> HttpResponse:
    """Per round: annotation quality from the database, and the metrics each trained model
    version recorded in the registry (hallucination, reward, KL), as tables and plots."""

    _require(request, "annotation.view_round")
    numbers = list(Round.objects.order_by("number").values_list("number", flat=True))
    annotation_rows: list[dict[str, Any]] = []
    for number in numbers:
        report = quality.round_quality([number])
        graded = [s.gold_accuracy for s in report.annotators if s.gold_accuracy is not None]
        annotation_rows.append(
            {
                "round": number,
                "labels": report.labels,
                "alpha_rank": report.alpha.get("rank"),
                "alpha_correct": report.alpha.get("correct"),
                "gold": sum(graded) / len(graded) if graded else None,
                "flagged": sum(s.flagged for s in report.annotators),
                "ai_labelled": Candidate.objects.filter(round__number=number, ai_feedback__isnull=False).count(),
            }
        )
    rows = version_rows(Registry(settings.FACTLOOP_MODEL_DIR))
    # Columns with at least one value (DDPO records no reward or KL), figures to 3 decimals:
    # a held-out set of hundreds of items tells no more.
    shown = [k for k in MODEL_METRICS if any(m.get(k) is not None for _, _, m in rows)] or list(HALLUCINATION_METRICS)
    model_rows = [{"round": r, "name": name, "metrics": [figure(m.get(k)) for k in shown]} for r, name, m in rows]
    charts = [
        plots.lines(
            "Agreement and gold accuracy per round",
            numbers,
            {
                "Krippendorff's alpha (rank)": [r["alpha_rank"] for r in annotation_rows],
                "Krippendorff's alpha (correct)": [r["alpha_correct"] for r in annotation_rows],
                "mean gold accuracy": [r["gold"] for r in annotation_rows],
            },
        ),
        plots.lines(
            "Labels per round",
            numbers,
            {  # a round without labels yet is no point (nothing to draw before the first)
                "human labels": [r["labels"] or None for r in annotation_rows],
                "candidates the AI labeller labelled": [r["ai_labelled"] or None for r in annotation_rows],
            },
        ),
        hallucination_chart(rows),
        plots.lines(
            "Reward and KL per round (trained versions)",
            [r for r, _, _ in rows],
            {name: [m.get(name) for _, _, m in rows] for name in TRAINING_METRICS},
        ),
    ]
    for row in annotation_rows:
        for key in ("alpha_rank", "alpha_correct"):
            row[key] = "-" if row[key] is None else f"{row[key]:.2f}"
        row["gold"] = _pct(row["gold"])
    context = _context(
        admin,
        request,
        "Metrics per round",
        annotation_rows=annotation_rows,
        model_rows=model_rows,
        model_metrics=shown,
        charts=[c for c in charts if c],
    )
    return TemplateResponse(request, "admin/annotation/round_metrics.html", context)
