"""DRF serializers: separate input (validation) and output (rendering) shapes."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from annotation.models import Assignment, Correction, Job, Task
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
            "heartbeat_at",
            "attempts",
            "history",
        ]
        read_only_fields = fields


class TokenInput(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=4096, trim_whitespace=False, style={"input_type": "password"})


class TokenOutput(serializers.Serializer):
    token = serializers.CharField()
    expires_at = serializers.DateTimeField()


class JobPageOutput(serializers.Serializer):
    """One page of jobs (LimitOffsetPagination)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = JobOutput(many=True)


class VersionOutput(serializers.Serializer):
    """A registered model version (models/registry.py) as the admin API shows it."""

    name = serializers.CharField()
    kind = serializers.CharField(help_text="policy or reward")
    status = serializers.CharField(help_text="ready, serving, rejected, ...")
    base_model = serializers.CharField()
    adapter = serializers.BooleanField(help_text="Whether it is the base model plus a LoRA adapter.")
    parent = serializers.CharField(allow_null=True)  # type: ignore[assignment]  # DRF's Field.parent is unrelated
    round = serializers.IntegerField(allow_null=True)
    created_at = serializers.CharField()
    metrics = serializers.DictField(help_text="Its newest evaluation's metrics (CHAIR_i, POPE F1, ...).")


class DeployInput(serializers.Serializer):
    reason = serializers.CharField(default="", allow_blank=True, max_length=1000, help_text="Why, for the audit log.")


class DeploymentOutput(serializers.Serializer):
    version = serializers.CharField()
    previous = serializers.CharField(allow_null=True, help_text="The version served before.")
    rollback = serializers.BooleanField(help_text="True when the version is older than the one served before.")
    served_as = serializers.CharField(help_text="The model name the vLLM server answers to for it.")


class JobFilterInput(serializers.Serializer):
    status = serializers.ChoiceField(choices=Job.Status.choices, required=False)
    kind = serializers.ChoiceField(choices=Job.Kind.choices, required=False)


class HealthcheckInput(serializers.Serializer):
    queue = serializers.ChoiceField(choices=list(QUEUES), default="generate")


# ---------------------------------------------------------------------------------------
# Annotation

MAX_RATIONALE = 5_000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000


class ContextTurnOutput(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()


class PromptOutput(serializers.Serializer):
    text = serializers.CharField()
    context = ContextTurnOutput(many=True)  # type: ignore[assignment]  # DRF's Field.context is unrelated


class ImageOutput(serializers.Serializer):
    url = serializers.CharField()
    width = serializers.IntegerField()
    height = serializers.IntegerField()


class SuggestionOutput(serializers.Serializer):
    index = serializers.IntegerField(
        help_text="Its number among the candidate's suggestions (what a correction cites)."
    )
    kind = serializers.ChoiceField(choices=["exist", "count", "colour", "relation", "question"])
    start = serializers.IntegerField(help_text="The suspected words: character offsets in the candidate's text.")
    end = serializers.IntegerField()
    question = serializers.CharField(help_text="What the AI labeller was asked about the image.")
    answer = serializers.CharField(help_text="What it answered (model output: show as text).")
    fix = serializers.ListField(
        allow_null=True, help_text="[start, end, replacement] in the candidate's text: the proposed edit."
    )


class CandidateOutput(serializers.Serializer):
    id = serializers.IntegerField()
    label = serializers.CharField(help_text="A, B, ... in the order shown.")  # type: ignore[assignment]
    text = serializers.CharField()
    ai_score = serializers.IntegerField(
        allow_null=True, help_text="The AI labeller's score: minus its claims judged false (null: not labelled)."
    )
    ai_labeller = serializers.CharField(allow_null=True, help_text="What made the machine suggestions.")
    suggestions = SuggestionOutput(many=True, help_text="Machine suggestions: the claims the AI labeller doubts.")


class AssignmentOutput(serializers.Serializer):
    """An annotator's lease on a task, with everything needed to do it. Gold answers and
    other annotators' work are never part of it."""

    id = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=Task.Kind.choices)
    status = serializers.ChoiceField(choices=Assignment.Status.choices)
    round = serializers.IntegerField()
    leased_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField()
    prompt = PromptOutput()
    image = ImageOutput()
    candidates = CandidateOutput(many=True)
    suggested_order = serializers.ListField(
        child=serializers.IntegerField(),
        allow_null=True,
        help_text="The AI labeller's proposed ranking (candidate ids, best first); null without AI feedback.",
    )

    def to_representation(self, instance: Any) -> dict[str, Any]:
        # `instance` is selectors.work_payload's dict, already in this shape; the fields above
        # document it (OpenAPI) and a test checks the two agree.
        return dict(instance)


class SkipOutput(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Assignment.Status.choices)
    next = AssignmentOutput(
        required=False,
        allow_null=True,
        help_text="With ?next=1: your next assignment, leased in the same request (null when there is none).",
    )


class JudgementInput(serializers.Serializer):
    ranking = serializers.ListField(
        child=serializers.IntegerField(), min_length=2, max_length=16, help_text="The task's candidate ids, best first."
    )
    hallucination_tie = serializers.BooleanField(
        default=False, help_text="Q1 (fewer hallucinations) was a tie, so the order answers Q2 (more helpful)."
    )
    tiers = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(), min_length=1, max_length=16),
        required=False,
        max_length=16,
        help_text="Q1 for k candidates: ids grouped by hallucination, fewest first; a group of several is a tie "
        "that the ranking orders by helpfulness (Q2). Without it, hallucination_tie says whether all tied.",
    )
    hallucinated = serializers.ListField(
        child=serializers.IntegerField(),
        default=list,
        max_length=16,
        help_text="Candidate ids flagged as hallucinating.",
    )
    rationale = serializers.CharField(default="", allow_blank=True, max_length=MAX_RATIONALE, trim_whitespace=True)
    time_spent_ms = serializers.IntegerField(default=0, min_value=0, max_value=MAX_TIME_SPENT_MS)

    def validate_ranking(self, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise serializers.ValidationError("a candidate appears twice in the ranking")
        return value


class JudgementOutput(serializers.Serializer):
    # Plain fields rather than a ModelSerializer: this is on the hot path, and a
    # ModelSerializer introspects the model on every instantiation.
    assignment = serializers.IntegerField(source="assignment_id")
    ranking = serializers.ListField(child=serializers.IntegerField())
    preferred = serializers.IntegerField(source="preferred_id")
    rejected = serializers.IntegerField(source="rejected_id")
    hallucination_tie = serializers.BooleanField()
    tiers = serializers.ListField(child=serializers.ListField(child=serializers.IntegerField()))
    hallucinated = serializers.ListField(child=serializers.IntegerField())
    rejected_hallucinates = serializers.BooleanField()
    rationale = serializers.CharField()
    time_spent_ms = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    next = AssignmentOutput(
        required=False,
        allow_null=True,
        help_text="With ?next=1: your next assignment, leased in the same request (null when there is none).",
    )


def max_corrected_chars() -> int:
    """A correction may be up to twice the longest candidate (FACTLOOP_MAX_RESPONSE_CHARS)."""
    return 2 * int(settings.FACTLOOP_MAX_RESPONSE_CHARS)


class CorrectionInput(serializers.Serializer):
    corrected = serializers.CharField(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        max_length=max_corrected_chars(),
        help_text="The rewritten response (up to twice FACTLOOP_MAX_RESPONSE_CHARS characters).",
    )
    no_hallucination = serializers.BooleanField(default=False)
    suggestions = serializers.DictField(
        child=serializers.ListField(child=serializers.IntegerField(min_value=0), max_length=200),
        default=dict,
        help_text='What the annotator did with the machine suggestions: {"accepted": [index], "rejected": [index]}.',
    )
    span_categories = serializers.ListField(
        child=serializers.ChoiceField(choices=Correction.Category.choices, allow_null=True),
        default=list,
        max_length=200,
        help_text="One error category (or null) per changed span, in the order the diff gives them.",
    )
    time_spent_ms = serializers.IntegerField(default=0, min_value=0, max_value=MAX_TIME_SPENT_MS)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "corrected" not in attrs and not attrs["no_hallucination"]:
            raise serializers.ValidationError({"corrected": "send the corrected text, or no_hallucination: true"})
        return attrs


class SpanOutput(serializers.Serializer):
    original_start = serializers.IntegerField()
    original_end = serializers.IntegerField()
    corrected_start = serializers.IntegerField()
    corrected_end = serializers.IntegerField()
    original_text = serializers.CharField()
    corrected_text = serializers.CharField()
    kind = serializers.ChoiceField(choices=["replace", "insert", "delete"])
    category = serializers.ChoiceField(choices=Correction.Category.choices, allow_null=True, required=False)


class CorrectionOutput(serializers.Serializer):
    assignment = serializers.IntegerField(source="assignment_id")
    candidate = serializers.IntegerField(source="candidate_id")
    original = serializers.CharField()
    corrected = serializers.CharField()
    no_hallucination = serializers.BooleanField()
    spans = SpanOutput(many=True)
    suggestions = serializers.DictField(
        child=serializers.ListField(child=serializers.IntegerField()),
        help_text="The machine suggestions the annotator accepted and rejected (empty: none shown or answered).",
    )
    time_spent_ms = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    next = AssignmentOutput(
        required=False,
        allow_null=True,
        help_text="With ?next=1: your next assignment, leased in the same request (null when there is none).",
    )


class DiffInput(serializers.Serializer):
    corrected = serializers.CharField(allow_blank=True, trim_whitespace=False, max_length=max_corrected_chars())


class DiffOutput(serializers.Serializer):
    spans = SpanOutput(many=True)
