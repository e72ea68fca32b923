"""Server-rendered pages. The annotator pages render the task with Django's autoescaping
(model output is untrusted text) and hand the rest to one small script per page, which
talks to the REST API."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods

from annotation.labeling import queue
from annotation.models import Assignment, Correction, Image, Task
from annotation.rules import selectors
from annotation.rules.errors import Refused
from annotation.rules.roles import is_annotator
from annotation.web.annotator_api import refusal_status

View = Callable[..., HttpResponseBase]


def annotator_required(view: View) -> View:
    """Log in first; then annotators (and admins) only."""

    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not is_annotator(request.user):
            raise PermissionDenied("This page is for annotators.")
        return view(request, *args, **kwargs)

    return wrapped


@login_required
def home(request: HttpRequest) -> HttpResponse:
    done = Assignment.objects.filter(annotator_id=request.user.pk, status=Assignment.Status.SUBMITTED).count()
    return render(request, "annotation/home.html", {"submitted": done})


@annotator_required
@require_http_methods(["GET", "POST"])
def annotate_next(request: HttpRequest) -> HttpResponse:
    """POST leases the next task (or resumes the live one) and shows it. GET shows the live
    lease if there is one and otherwise a page with the button that POSTs: following a
    link (a prefetch, a crawler) never takes work."""
    if request.method == "GET":
        live = queue.current_assignment(request.user)
        if live is not None:
            return redirect("annotate-assignment", assignment_id=live.pk)
        return render(request, "annotation/start.html", {"lease_minutes": settings.FACTLOOP_LEASE_MINUTES})
    try:
        assignment = queue.next_assignment_for(request.user)
    except Refused as error:
        return render(request, "annotation/no_work.html", {"reason": error.message}, status=refusal_status(error))
    if assignment is None:
        return render(request, "annotation/no_work.html", {"reason": ""})
    return redirect("annotate-assignment", assignment_id=assignment.pk)


@annotator_required
def annotate(request: HttpRequest, assignment_id: int) -> HttpResponse:
    assignment = Assignment.objects.filter(pk=assignment_id, annotator_id=request.user.pk).first()
    if assignment is None:
        raise Http404("No such assignment of yours.")
    if assignment.status != Assignment.Status.LEASED or assignment.is_expired():
        messages.info(request, f"That task is {'expired' if assignment.is_expired() else assignment.status}.")
        return redirect("annotate")
    data = selectors.work_payload(assignment)
    context = {
        "assignment": assignment,
        "data": data,
        "kind_label": Task.Kind(data["kind"]).label,
        "seconds_left": int((assignment.expires_at - timezone.now()).total_seconds()),
        "categories": Correction.Category.choices,
    }
    template = "annotation/rank.html" if data["kind"] == Task.Kind.RANK else "annotation/correct.html"
    return render(request, template, context)


@annotator_required
@require_GET
def image_file(request: HttpRequest, sha256: str) -> HttpResponseBase:
    """An image, to signed-in annotators and admins only. Its name is its content hash, so
    a browser may keep it as long as it likes."""
    image = Image.objects.filter(sha256=sha256).only("file").first()
    if image is None:
        raise Http404("No such image.")
    try:
        handle = image.file.open("rb")
    except FileNotFoundError:
        raise Http404("The image file is missing from storage.") from None
    response = FileResponse(handle)
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    return response


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database check for load balancers and the demo launcher. Anonymous
    callers learn only up or down; staff also see the database and, when down, why (the
    error can name hosts and ports)."""
    staff = request.user.is_authenticated and request.user.is_staff
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as error:  # noqa: BLE001 - any database failure means "not ready"
        return JsonResponse({"status": "error", **({"database": str(error)} if staff else {})}, status=503)
    return JsonResponse({"status": "ok", **({"database": connection.vendor} if staff else {})})
