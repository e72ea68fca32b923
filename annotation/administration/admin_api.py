"""The admin REST API: drive the loop from a script (factloop/client.py wraps it).

Thin views over the services the admin pages and commands use: jobs (list, detail, retry,
cancel, download), versions (list, deploy), the worker healthcheck, imports (an uploaded zip,
imported by a job), rounds (list with progress, start, open, freeze), training runs (start
as a job, status with steps, resume), exports (a job; GET /api/admin/jobs/ID/download/
streams its files) and a round's quality report.
Admins only (session or token); every long action is a Job whose progress the jobs
endpoints show. A refused request answers 4xx with the reason and writes nothing.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation.administration import inputs
from annotation.administration.dashboard import round_state
from annotation.administration.inputs import ExportInput, ImportInput, StartRoundInput, TrainInput
from annotation.data import downloads
from annotation.jobs import lifecycle as jobs
from annotation.labeling import quality
from annotation.labeling.rounds import freeze_round, identical_ranking_counts, open_round
from annotation.loop.deployment import DeployRefused, deploy_version
from annotation.loop.training import TrainingRefused
from annotation.models import Job, Round, TrainingRun
from annotation.rules import selectors
from annotation.rules.errors import Invalid, Refused
from annotation.rules.roles import IsAdmin
from annotation.web.serializers import (
    DeployInput,
    DeploymentOutput,
    HealthcheckInput,
    JobFilterInput,
    JobOutput,
    JobPageOutput,
    VersionOutput,
)
from models.registry import Registry


class RoundOutput(serializers.Serializer):
    number = serializers.IntegerField()
    status = serializers.CharField()
    policy_version = serializers.CharField()
    task_kinds = serializers.ListField(child=serializers.CharField())
    ai_labeller = serializers.CharField()
    selection = serializers.CharField()
    human_prompts = serializers.IntegerField(allow_null=True)
    heldout = serializers.CharField(help_text="The held-out dataset its training is evaluated on (empty: none yet).")
    prompts = serializers.IntegerField(help_text="Prompts in the round.")
    generated = serializers.IntegerField(help_text="Prompts whose candidates are in.")
    labels = serializers.IntegerField(help_text="Judgements and corrections given.")
    capacity = serializers.IntegerField(help_text="Labels its tasks can take (each task its overlap).")
    active_annotators = serializers.IntegerField(help_text="Annotators who submitted in the last hour.")
    identical_rankings = serializers.CharField(help_text="convert or drop: a ranking of identical candidates.")
    identical_rankings_done = serializers.DictField(
        help_text="converted (rankings of identical candidates made correction tasks), dropped (left out)."
    )


def round_output(round_: Round) -> dict[str, Any]:
    state = round_state(round_)
    return {
        "number": round_.number,
        "status": round_.status,
        "policy_version": round_.policy_version,
        "task_kinds": list(round_.task_kinds),
        "ai_labeller": round_.ai_labeller,
        "selection": round_.selection,
        "human_prompts": round_.human_prompts,
        "heldout": round_.heldout.name if round_.heldout_id is not None and round_.heldout else "",
        **{key: state[key] for key in ("prompts", "generated", "labels", "capacity", "active_annotators")},
        "identical_rankings": round_.identical_rankings,
        "identical_rankings_done": identical_ranking_counts(round_),
    }


class StartedOutput(serializers.Serializer):
    round = RoundOutput()
    job = JobOutput(help_text="The candidate generation job.")


class RoundListApi(APIView):
    """GET: every round, newest first, with its progress. POST: start a round (its candidate
    generation is a job; it opens when every prompt has its candidates)."""

    permission_classes = [IsAdmin]

    @extend_schema(responses=RoundOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response([round_output(r) for r in Round.objects.select_related("heldout").order_by("-number")])

    @extend_schema(request=StartRoundInput, responses={201: StartedOutput})
    def post(self, request: Request) -> Response:
        payload = StartRoundInput(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            round_, job = inputs.start(payload.validated_data, by=request.user)
        except ValidationError as error:
            raise Invalid("; ".join(error.messages)) from None
        body = {"round": round_output(round_), "job": JobOutput(job).data}
        return Response(body, status=status.HTTP_201_CREATED)


class RoundDetailApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=RoundOutput)
    def get(self, request: Request, number: int) -> Response:
        return Response(round_output(get_object_or_404(Round, number=number)))


class RoundChangeApi(APIView):
    """POST .../open/ (a draft round) or .../freeze/ (no more labels); 409 when the round's
    state does not allow it."""

    permission_classes = [IsAdmin]
    change = ""

    @extend_schema(request=None, responses={200: RoundOutput, 409: None})
    def post(self, request: Request, number: int) -> Response:
        round_ = get_object_or_404(Round, number=number)
        try:
            if self.change == "open":
                open_round(round_)
            else:
                freeze_round(round_)
        except ValidationError as error:
            raise Refused("; ".join(error.messages)) from None
        round_.refresh_from_db()
        return Response(round_output(round_))


class TrainingRunOutput(serializers.Serializer):
    id = serializers.IntegerField()
    round = serializers.IntegerField(source="round.number")
    method = serializers.CharField()
    status = serializers.CharField()
    steps = serializers.DictField(help_text="Per step: status, started/finished, detail (the gate's decision...).")
    version = serializers.CharField()
    deployed = serializers.BooleanField()
    next_round = serializers.IntegerField(source="next_round.number", allow_null=True, default=None)
    job = serializers.IntegerField(source="job_id", allow_null=True)
    error = serializers.CharField()


class TrainApi(APIView):
    """Train the round (train_round as a job on the `train` queue): freeze, export, train,
    evaluate, gate, register, deploy, open the next round. 409 with the reason when it
    cannot start (no labels, a run already finished, ...)."""

    permission_classes = [IsAdmin]

    @extend_schema(request=TrainInput, responses={201: TrainingRunOutput, 409: None})
    def post(self, request: Request, number: int) -> Response:
        payload = TrainInput(data=request.data)
        payload.is_valid(raise_exception=True)
        round_ = get_object_or_404(Round, number=number)
        try:
            run = inputs.train(round_, payload.validated_data, by=request.user)
        except TrainingRefused as error:
            raise Refused(str(error)) from None
        return Response(TrainingRunOutput(run).data, status=status.HTTP_201_CREATED)


class TrainingRunApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=TrainingRunOutput)
    def get(self, request: Request, run_id: int) -> Response:
        run = get_object_or_404(TrainingRun.objects.select_related("round", "next_round"), pk=run_id)
        return Response(TrainingRunOutput(run).data)


class ExportApi(APIView):
    """Queue an export (a job on the `export` queue); download it when it has succeeded."""

    permission_classes = [IsAdmin]

    @extend_schema(request=ExportInput, responses={201: JobOutput})
    def post(self, request: Request) -> Response:
        payload = ExportInput(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            job = inputs.export(payload.validated_data, by=request.user)
        except ValidationError as error:
            raise Invalid("; ".join(error.messages)) from None
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)


class ImportApi(APIView):
    """Upload a zip (multipart/form-data) to import as a job on the `export` queue: 201 with
    the job once its directory checks out (400 with the reason otherwise, nothing kept). The
    job's result counts what was imported; a bad row fails it with every row named, unless
    skip_bad."""

    permission_classes = [IsAdmin]
    parser_classes = [MultiPartParser]

    @extend_schema(request={"multipart/form-data": ImportInput}, responses={201: JobOutput})
    def post(self, request: Request) -> Response:
        payload = ImportInput(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            job = inputs.import_upload(payload.validated_data, by=request.user)
        except ValidationError as error:
            raise Invalid("; ".join(error.messages)) from None
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)


class QualityApi(APIView):
    """A round's quality report (annotation/labeling/quality.py) as JSON."""

    permission_classes = [IsAdmin]

    @extend_schema(responses=serializers.DictField())
    def get(self, request: Request, number: int) -> Response:
        get_object_or_404(Round, number=number)
        report = quality.round_quality([number])
        body = asdict(report)
        body["kappa"] = [dict(zip(("kind", "a", "b", "shared", "kappa"), row, strict=True)) for row in report.kappa]
        return Response(body)


class BoundedPagination(LimitOffsetPagination):
    """Pages of at most 1,000 rows, from an offset PostgreSQL can take (a larger number is a
    400, never a database error)."""

    max_limit = 1000
    MAX_OFFSET = 2**31 - 1

    def get_offset(self, request: Request) -> int:
        offset = super().get_offset(request)
        if offset > self.MAX_OFFSET:
            raise exceptions.ValidationError({"offset": f"at most {self.MAX_OFFSET}"})
        return offset


class JobListApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=Job.Status.values),
            OpenApiParameter("kind", str, enum=Job.Kind.values),
            OpenApiParameter("limit", int, description="jobs per page (default 50)"),
            OpenApiParameter("offset", int, description="jobs to skip"),
        ],
        responses=JobPageOutput,
    )
    def get(self, request: Request) -> Response:
        filters = JobFilterInput(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = BoundedPagination()
        page = paginator.paginate_queryset(selectors.jobs(**filters.validated_data), request, view=self)
        return paginator.get_paginated_response(JobOutput(page, many=True).data)


class JobDetailApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=JobOutput)
    def get(self, request: Request, job_id: int) -> Response:
        job = get_object_or_404(selectors.jobs(), pk=job_id)
        return Response(JobOutput(job).data)


class JobRetryApi(APIView):
    """Queue a failed or cancelled job again (409 for a job in any other state)."""

    permission_classes = [IsAdmin]

    @extend_schema(request=None, responses={200: JobOutput, 409: None})
    def post(self, request: Request, job_id: int) -> Response:
        get_object_or_404(selectors.jobs(), pk=job_id)
        return Response(JobOutput(jobs.retry(job_id, by=request.user)).data)


class JobCancelApi(APIView):
    """Cancel a queued or running job (409 for a finished one); a running job stops at its
    next progress report."""

    permission_classes = [IsAdmin]

    @extend_schema(request=None, responses={200: JobOutput, 409: None})
    def post(self, request: Request, job_id: int) -> Response:
        get_object_or_404(selectors.jobs(), pk=job_id)
        return Response(JobOutput(jobs.cancel(job_id, by=request.user)).data)


class JobDownloadApi(APIView):
    """A finished export job's files as one zip archive, streamed (409 for another job, a
    job that has not succeeded, or files no longer there)."""

    permission_classes = [IsAdmin]

    @extend_schema(responses={(200, "application/zip"): bytes, 409: None})
    def get(self, request: Request, job_id: int) -> StreamingHttpResponse:
        job = get_object_or_404(selectors.jobs(), pk=job_id)
        folder = downloads.export_folder(job)
        name = f"factloop-{folder.name}"
        response = StreamingHttpResponse(downloads.zip_stream(folder, name), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="{name}.zip"'
        return response


class VersionListApi(APIView):
    """The registered model versions, oldest first, each with its status and newest metrics."""

    permission_classes = [IsAdmin]

    @extend_schema(responses=VersionOutput(many=True))
    def get(self, request: Request) -> Response:
        registry = Registry(settings.FACTLOOP_MODEL_DIR)
        rows = [
            {
                "name": v.name,
                "kind": v.kind,
                "status": registry.status(v.name),
                "base_model": v.base_model,
                "adapter": v.adapter is not None,
                "parent": v.parent,
                "round": v.round,
                "created_at": v.created_at,
                "metrics": registry.latest_metrics(v.name),
            }
            for v in sorted(registry, key=lambda v: v.created_at)
        ]
        return Response(VersionOutput(rows, many=True).data)


class VersionDeployApi(APIView):
    """Serve a version: hot-load it on the vLLM server(s) and mark it serving. Naming a
    version older than the one served is a rollback; both are in the audit log with who
    did it and why. 409 with the reason when it cannot be served (nothing changes)."""

    permission_classes = [IsAdmin]

    @extend_schema(request=DeployInput, responses={200: DeploymentOutput, 409: None})
    def post(self, request: Request, name: str) -> Response:
        payload = DeployInput(data=request.data)
        payload.is_valid(raise_exception=True)
        try:
            deployment = deploy_version(name, by=request.user, reason=payload.validated_data["reason"])
        except DeployRefused as error:
            raise Refused(str(error)) from None
        return Response(DeploymentOutput(deployment.as_dict()).data)


class HealthcheckApi(APIView):
    """Queue a worker health check on one queue; poll the returned job for its result."""

    permission_classes = [IsAdmin]

    @extend_schema(request=HealthcheckInput, responses={201: JobOutput})
    def post(self, request: Request) -> Response:
        payload = HealthcheckInput(data=request.data)
        payload.is_valid(raise_exception=True)
        job = jobs.enqueue_job(Job.Kind.HEALTHCHECK, queue=payload.validated_data["queue"], created_by=request.user)
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)
