"""Reads: querysets and waits used by views, APIs and commands."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import cache
from typing import Any

from django.db import connection
from django.db.models import Exists, OuterRef, QuerySet
from django.urls import reverse

from annotation.models import Assignment, Candidate, Image, Job, Prompt, Round, RoundPrompt, Task, TaskCandidate
from contract.feedback import Feedback


def jobs(*, status: str | None = None, kind: str | None = None) -> QuerySet[Job]:
    queryset = Job.objects.select_related("created_by")
    if status:
        queryset = queryset.filter(status=status)
    if kind:
        queryset = queryset.filter(kind=kind)
    return queryset


def wait_for_jobs(job_ids: Iterable[int], *, timeout: float, poll: float = 0.2) -> list[Job]:
    """Poll until every job has finished or `timeout` seconds have passed; return the rows."""
    ids = list(job_ids)
    deadline = time.monotonic() + timeout
    while True:
        rows = list(Job.objects.filter(pk__in=ids).order_by("pk"))
        if all(row.status in Job.FINISHED for row in rows) or time.monotonic() >= deadline:
            return rows
        time.sleep(poll)


@cache
def _work_sql() -> str:
    """One SELECT for a task's payload: a row per candidate, in position order. Written out
    rather than built by the ORM because it runs on every `next` and the ORM's query
    compilation costs more than the query itself on a small machine (bench/annotate.py)."""
    task, round_, prompt, image = (m._meta.db_table for m in (Task, Round, Prompt, Image))
    slot, candidate = TaskCandidate._meta.db_table, Candidate._meta.db_table
    return (
        f"SELECT t.kind, r.number, p.text, p.context, i.sha256, i.width, i.height, s.position, c.id, c.text, "
        f"c.ai_feedback "
        f"FROM {task} t JOIN {round_} r ON r.id = t.round_id JOIN {prompt} p ON p.id = t.prompt_id "
        f"JOIN {image} i ON i.id = p.image_id JOIN {slot} s ON s.task_id = t.id "
        f"JOIN {candidate} c ON c.id = s.candidate_id "
        f"WHERE t.id = %s ORDER BY s.position"
    )


def work_payload(assignment: Assignment) -> dict[str, Any]:
    """What an annotator sees of an assignment (serializers.AssignmentOutput's shape): the
    task's image, conversation and candidates, never its gold answer."""
    with connection.cursor() as cursor:
        cursor.execute(_work_sql(), [assignment.task_id])
        rows = cursor.fetchall()
    if not rows:
        raise Task.DoesNotExist(f"task {assignment.task_id} has no candidates")
    kind, number, text, context, sha256, width, height = rows[0][:7]
    if isinstance(context, str):  # SQLite hands JSON back as text
        context = json.loads(context)
    candidates = [
        {"id": candidate_id, "label": chr(ord("A") + position), "text": candidate_text}
        | machine_suggestions(json.loads(feedback) if isinstance(feedback, str) else feedback)
        for *_, position, candidate_id, candidate_text, feedback in rows
    ]
    scores = [c["ai_score"] for c in candidates]
    order = None
    if None not in scores and len(candidates) > 1:
        order = [c["id"] for c in sorted(candidates, key=lambda c: -c["ai_score"])]  # stable: shown order on ties
    return {
        "id": assignment.pk,
        "kind": kind,
        "status": assignment.status,
        "round": number,
        "leased_at": assignment.leased_at,
        "expires_at": assignment.expires_at,
        "prompt": {"text": text, "context": context},
        "image": {"url": reverse("image-file", args=[sha256]), "width": width, "height": height},
        "candidates": candidates,
        "suggested_order": order,
    }


def machine_suggestions(feedback: dict[str, Any] | None) -> dict[str, Any]:
    """A candidate's AI feedback as annotators see it: its score and the suspected claims,
    each with the words it marks and the fix it proposes (offsets into the candidate)."""
    if feedback is None:
        return {"ai_score": None, "ai_labeller": None, "suggestions": []}
    found = Feedback.from_dict(feedback)
    suggestions = [
        {
            "index": index,
            "kind": claim.kind,
            "start": claim.start,
            "end": claim.end,
            "question": claim.question,
            "answer": claim.answer,
            "fix": list(claim.fix) if claim.fix else None,
        }
        for index, claim in enumerate(found.suspected)
    ]
    return {"ai_score": found.score, "ai_labeller": found.labeller, "suggestions": suggestions}


# The most prompts one round may take: the admin's form and the admin API share it.
MAX_ROUND_PROMPTS = 10_000_000


def prompts_for_a_round(split: str, *, only_new: bool, limit: int | None) -> list[Prompt]:
    """The split's prompts, oldest first, at most `limit`; with `only_new`, only those no
    round has used (neither in a round nor with candidates)."""
    found = prompts_query(split, only_new=only_new)
    return list(found[:limit] if limit else found)


def prompts_query(split: str, *, only_new: bool) -> QuerySet[Prompt]:
    found = Prompt.objects.filter(split=split).order_by("pk")
    if only_new:
        # NOT EXISTS, an anti-join: PostgreSQL plans `NOT IN (SELECT ...)` as a subplan run
        # per prompt once the subquery outgrows work_mem (minutes at 150,000 prompts).
        in_a_round = RoundPrompt.objects.filter(prompt_id=OuterRef("pk"))
        answered = Candidate.objects.filter(prompt_id=OuterRef("pk"))
        found = found.exclude(Exists(in_a_round)).exclude(Exists(answered))
    return found
