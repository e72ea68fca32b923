"""REST API: thin APIViews that parse input, call a service or selector, and render."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, services
from annotation.models import Job
from annotation.roles import IsAdmin, role_name
from annotation.serializers import HealthcheckInput, JobFilterInput, JobOutput, MeOutput


class MeApi(APIView):
    """Who the caller is and which role they have."""

    @extend_schema(responses=MeOutput)
    def get(self, request: Request) -> Response:
        return Response(MeOutput({"username": request.user.get_username(), "role": role_name(request.user)}).data)


class JobListApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=Job.Status.values),
            OpenApiParameter("kind", str, enum=Job.Kind.values),
        ],
        responses=JobOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = JobFilterInput(data=request.query_params)
        filters.is_valid(raise_exception=True)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(selectors.jobs(**filters.validated_data), request, view=self)
        return paginator.get_paginated_response(JobOutput(page, many=True).data)


class JobDetailApi(APIView):
    permission_classes = [IsAdmin]

    @extend_schema(responses=JobOutput)
    def get(self, request: Request, job_id: int) -> Response:
        job = get_object_or_404(selectors.jobs(), pk=job_id)
        return Response(JobOutput(job).data)


class HealthcheckApi(APIView):
    """Queue a worker health check on one queue; poll the returned job for its result."""

    permission_classes = [IsAdmin]

    @extend_schema(request=HealthcheckInput, responses={201: JobOutput})
    def post(self, request: Request) -> Response:
        payload = HealthcheckInput(data=request.data)
        payload.is_valid(raise_exception=True)
        job = services.enqueue_job(Job.Kind.HEALTHCHECK, queue=payload.validated_data["queue"], created_by=request.user)
        return Response(JobOutput(job).data, status=status.HTTP_201_CREATED)
