"""The annotator REST API (and what every API view shares: the token, the schema, the error
handler): thin APIViews that parse input, call a service or selector, and render. The admin
endpoints are annotation.administration.admin_api."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from django.conf import settings
from django.contrib.auth import authenticate
from django.core.exceptions import RequestDataTooBig
from drf_spectacular.utils import OpenApiParameter, extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import status
from rest_framework.parsers import FormParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.jobs import lifecycle as jobs
from annotation.labeling import queue
from annotation.labeling.submissions import preview_spans, submit_correction, submit_judgement
from annotation.models import Assignment
from annotation.rules import selectors
from annotation.rules.errors import Busy, Invalid, Refused
from annotation.rules.roles import IsAnnotator, role_name
from annotation.web.authentication import issue_token, lockout_message, revoke_tokens_on_logout, token_expires_at
from annotation.web.parsers import BoundedJSONParser
from annotation.web.serializers import (
    AssignmentOutput,
    CorrectionInput,
    CorrectionOutput,
    DiffInput,
    DiffOutput,
    JudgementInput,
    JudgementOutput,
    MeOutput,
    SkipOutput,
    TokenInput,
    TokenOutput,
)


def refusal_status(error: Refused) -> int:
    """The HTTP status of a domain refusal: the one place that chooses it."""
    if isinstance(error, Invalid):
        return status.HTTP_400_BAD_REQUEST
    if isinstance(error, Busy):
        return status.HTTP_503_SERVICE_UNAVAILABLE
    return status.HTTP_409_CONFLICT


def exception_handler(error: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus: a request the queue refuses answers with its status and reason;
    an assignment that is not the caller's answers 404; a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE gets a clear 413 (Django refuses to read it; left alone,
    that would be a bare 400 page)."""
    if isinstance(error, Refused):
        return Response({"detail": error.message}, status=refusal_status(error))
    if isinstance(error, jobs.JobStateError):
        return Response({"detail": str(error)}, status=status.HTTP_409_CONFLICT)
    if isinstance(error, Assignment.DoesNotExist):
        # Someone else's assignment answers exactly like a missing one.
        return Response({"detail": "No such assignment of yours."}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(error, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            {"detail": f"the request body is larger than the limit of {limit} bytes"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    return drf_exception_handler(error, context)


class TokenApi(APIView):
    """Your API token for a user name and password (JSON or a form). Repeated failures for
    one user name from one address are refused with 429 for a while (django-axes)."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    parser_classes = [BoundedJSONParser, FormParser]
    throttle_scope = "expensive"  # a PBKDF2 per try

    @extend_schema(request=TokenInput, responses={200: TokenOutput, 400: None, 429: None}, auth=[])
    def post(self, request: Request) -> Response:
        payload = TokenInput(data=request.data)
        payload.is_valid(raise_exception=True)
        user = authenticate(request._request, **payload.validated_data)
        if getattr(request._request, "axes_locked_out", False):
            return Response({"detail": lockout_message()}, status=status.HTTP_429_TOO_MANY_REQUESTS)
        if user is None:
            return Response({"detail": "Unable to log in with provided credentials."}, status=400)
        token = issue_token(user)
        return Response(TokenOutput({"token": token.key, "expires_at": token_expires_at(token.created)}).data)


class LogoutApi(APIView):
    """Sign out of the API: the caller's token stops working at once (signing in again issues
    a new one)."""

    @extend_schema(request=None, responses={204: None})
    def post(self, request: Request) -> Response:
        revoke_tokens_on_logout(None, request=request._request, user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchemaApi(SpectacularAPIView):
    """The OpenAPI schema, built once per process and version, then served from memory.

    drf-spectacular builds it on every request (a core's worth at 28 requests a second),
    and its first builds, run at once by a fresh process's threads, race on loading
    classes and answer 500; so the first build holds a lock and the rest reuse it. Its
    `_get_schema_response` is overridden: the version is pinned in requirements.txt."""

    throttle_scope = "expensive"
    _lock: ClassVar[threading.Lock] = threading.Lock()
    _built: ClassVar[dict[str | None, Any]] = {}

    def _get_schema_response(self, request: Request) -> Response:
        version = self.api_version or request.version or self._get_version_parameter(request)
        with self._lock:
            if version not in self._built:
                generator = self.generator_class(urlconf=self.urlconf, api_version=version, patterns=self.patterns)
                self._built[version] = generator.get_schema(request=request, public=self.serve_public)
        disposition = f'inline; filename="{self._get_filename(request, version)}"'
        return Response(data=self._built[version], headers={"Content-Disposition": disposition})


class MeApi(APIView):
    """Who the caller is and which role they have."""

    @extend_schema(responses=MeOutput)
    def get(self, request: Request) -> Response:
        return Response(MeOutput({"username": request.user.get_username(), "role": role_name(request.user)}).data)


# ---------------------------------------------------------------------------------------
# Annotation. Every view works on the caller's own assignments only: another annotator's
# assignment id answers 404, exactly like a missing one (exception_handler maps
# Assignment.DoesNotExist and errors.Refused to their answers).


class NextAssignmentApi(APIView):
    """Your live lease, or a new lease on the next task that needs you (204: nothing left)."""

    permission_classes = [IsAnnotator]

    @extend_schema(request=None, responses={200: AssignmentOutput, 204: None})
    def post(self, request: Request) -> Response:
        assignment = queue.next_assignment_for(request.user)
        if assignment is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(AssignmentOutput(selectors.work_payload(assignment)).data)


class AssignmentApi(APIView):
    permission_classes = [IsAnnotator]

    @extend_schema(responses=AssignmentOutput)
    def get(self, request: Request, assignment_id: int) -> Response:
        assignment = Assignment.objects.filter(pk=assignment_id, annotator_id=request.user.pk).first()
        if assignment is None:
            raise Assignment.DoesNotExist
        return Response(AssignmentOutput(selectors.work_payload(assignment)).data)


# `?next=1` on a submission or a skip: the answer also carries `next`, the annotator's next
# assignment (leased in the same request, after the submission is stored; null when no work
# is left), so that a label costs one round trip instead of two (submit, then next).
NEXT_PARAMETER = OpenApiParameter(
    "next",
    bool,
    description="also lease and return your next assignment as `next` (null when there is none)",
)


def _with_next(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    if request.query_params.get("next") not in ("1", "true"):
        return {key: value for key, value in data.items() if key != "next"}  # asked for nothing
    assignment = queue.next_assignment_for(request.user)
    return data | {"next": AssignmentOutput(selectors.work_payload(assignment)).data if assignment else None}


class SkipApi(APIView):
    """Give the task back; it will not be offered to you again."""

    permission_classes = [IsAnnotator]

    @extend_schema(request=None, responses=SkipOutput, parameters=[NEXT_PARAMETER])
    def post(self, request: Request, assignment_id: int) -> Response:
        assignment = queue.skip(request.user, assignment_id)
        return Response(_with_next(request, SkipOutput({"id": assignment.pk, "status": assignment.status}).data))


class JudgementApi(APIView):
    """Submit a ranking. Repeating a submission that went through returns it (200)."""

    permission_classes = [IsAnnotator]

    @extend_schema(
        request=JudgementInput, responses={201: JudgementOutput, 200: JudgementOutput}, parameters=[NEXT_PARAMETER]
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        payload = JudgementInput(data=request.data)
        payload.is_valid(raise_exception=True)
        judgement, created = submit_judgement(request.user, assignment_id, **payload.validated_data)
        return Response(
            _with_next(request, JudgementOutput(judgement).data),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class CorrectionApi(APIView):
    """Submit a correction; the server computes the changed spans. Repeating a submission
    that went through returns it (200)."""

    permission_classes = [IsAnnotator]

    @extend_schema(
        request=CorrectionInput, responses={201: CorrectionOutput, 200: CorrectionOutput}, parameters=[NEXT_PARAMETER]
    )
    def post(self, request: Request, assignment_id: int) -> Response:
        payload = CorrectionInput(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        correction, created = submit_correction(
            request.user,
            assignment_id,
            corrected=data.get("corrected"),
            no_hallucination=data["no_hallucination"],
            span_categories=data["span_categories"],
            suggestions=data["suggestions"],
            time_spent_ms=data["time_spent_ms"],
        )
        return Response(
            _with_next(request, CorrectionOutput(correction).data),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class DiffApi(APIView):
    """The changed spans between the task's response and a draft correction (writes nothing)."""

    permission_classes = [IsAnnotator]

    @extend_schema(request=DiffInput, responses=DiffOutput)
    def post(self, request: Request, assignment_id: int) -> Response:
        payload = DiffInput(data=request.data)
        payload.is_valid(raise_exception=True)
        spans = preview_spans(request.user, assignment_id, payload.validated_data["corrected"])
        return Response(DiffOutput({"spans": spans}).data)
