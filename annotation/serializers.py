"""DRF serializers: separate input (validation) and output (rendering) shapes."""

from __future__ import annotations

from rest_framework import serializers

from annotation.models import Job
from webapp.celery import QUEUES


class MeOutput(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.ChoiceField(choices=["admin", "annotator", "none"])


class JobOutput(serializers.ModelSerializer):
    created_by: serializers.SlugRelatedField[Job] = serializers.SlugRelatedField(slug_field="username", read_only=True)
    progress_percent = serializers.FloatField(allow_null=True)
    duration_seconds = serializers.FloatField(allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "queue",
            "status",
            "params",
            "result",
            "error",
            "progress_done",
            "progress_total",
            "progress_percent",
            "worker",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "duration_seconds",
        ]
        read_only_fields = fields


class JobFilterInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=Job.Status.choices, required=False)
    kind = serializers.ChoiceField(choices=Job.Kind.choices, required=False)


class HealthcheckInput(serializers.Serializer):
    queue = serializers.ChoiceField(choices=list(QUEUES), default="generate")
