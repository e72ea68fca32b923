"""Submissions: rankings and corrections. Each runs in one transaction with the assignment row
locked (PostgreSQL) or the write lock held (SQLite)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from annotation.labeling.queue import check_live, own_assignment
from annotation.labeling.rounds import add_candidates
from annotation.models import (
    Assignment,
    Candidate,
    Correction,
    Judgement,
    Prompt,
    Round,
    Task,
    TaskCandidate,
)
from annotation.rules.errors import Invalid, Refused
from contract import spans as span_diff
from contract.feedback import Feedback

# ---------------------------------------------------------------------------------------
# Submissions. Each runs in one transaction with the assignment row locked (PostgreSQL) or
# the write lock held (SQLite). A retry of a submission that went through returns what was
# stored, with created=False, and writes nothing: the first submission wins.


@dataclass(frozen=True)
class Shown:
    """A candidate as the task showed it."""

    candidate_id: int
    text: str


def _begin_submission(annotator: Any, assignment_id: int, kind: str) -> tuple[list[Shown], Any]:
    """Inside the caller's transaction: mark the annotator's live lease submitted and return
    the task's candidates in order, or return (_, stored result) for a submission that
    already went through. Raises Assignment.DoesNotExist for anyone else's assignment and
    Refused for a lease that is over, a task of another kind or a closed round.

    The fast path is one conditional UPDATE: it both checks the lease (the holder's, live,
    not yet submitted) and locks the row, so a concurrent retry waits for this transaction
    and then finds the assignment submitted. Anything refused afterwards rolls it back.
    """
    now = timezone.now()
    won = Assignment.objects.filter(
        pk=assignment_id, annotator=annotator, status=Assignment.Status.LEASED, expires_at__gt=now
    ).update(status=Assignment.Status.SUBMITTED, finished_at=now)
    if not won:
        assignment = own_assignment(annotator, assignment_id, lock=True)
        if assignment.task.kind != kind:
            raise Refused(f"this assignment is a {assignment.task.kind} task; submit a {assignment.task.kind} result")
        if assignment.status == Assignment.Status.SUBMITTED:
            return [], getattr(assignment, "judgement" if kind == Task.Kind.RANK else "correction")
        check_live(assignment, now)
        raise Refused("the lease on this task ended while the request was being checked; ask for the next one")
    rows = list(
        TaskCandidate.objects.filter(task__assignments__pk=assignment_id)
        .order_by("position")
        .values_list("task__kind", "task__round__status", "task__round__number", "candidate_id", "candidate__text")
    )
    if not rows:
        raise Refused("this task has no candidates to judge; ask for the next one")
    task_kind, round_status, round_number = rows[0][:3]
    if task_kind != kind:
        raise Refused(f"this assignment is a {task_kind} task; submit a {task_kind} result")
    if round_status != Round.Status.OPEN:
        raise Refused(f"Round {round_number} is {round_status}; it takes no more labels")
    return [Shown(candidate_id, text) for *_, candidate_id, text in rows], None


def default_tiers(ranking: Sequence[int], hallucination_tie: bool) -> list[list[int]]:
    """Q1's groups when only the flag is known: a tie groups all the candidates (the 2-way
    question), no tie ranks them one by one."""
    return [list(ranking)] if hallucination_tie else [[c] for c in ranking]


def tiers_problem(ranking: Sequence[int], tiers: Sequence[Sequence[int]]) -> str | None:
    """Why `tiers` (Q1: groups by hallucination, fewest first) does not fit `ranking` (best
    first), or None: every candidate in exactly one group, and the ranking runs through the
    groups in order (Q2 orders the candidates inside a group)."""
    flat = [c for tier in tiers for c in tier]
    if any(not tier for tier in tiers) or sorted(flat) != sorted(ranking) or len(set(flat)) != len(flat):
        return "the hallucination groups must hold each ranked candidate exactly once"
    group = {c: i for i, tier in enumerate(tiers) for c in tier}
    if [group[c] for c in ranking] != sorted(group[c] for c in ranking):
        return "the ranking must put every candidate of a group with fewer hallucinations first"
    return None


def submit_judgement(
    annotator: Any,
    assignment_id: int,
    *,
    ranking: Sequence[int],
    hallucination_tie: bool = False,
    tiers: Sequence[Sequence[int]] | None = None,
    hallucinated: Sequence[int] = (),
    rationale: str = "",
    time_spent_ms: int = 0,
) -> tuple[Judgement, bool]:
    """Store a ranking of the task's candidates, best first (LLaVA-RLHF, docs/methods.md 1a):
    ordered by fewer hallucinations, or, when that was a tie, by helpfulness. `tiers` is Q1's
    answer for k candidates: groups by hallucination, fewest first, a group of several being
    a tie that Q2 (helpfulness) ordered; without it, `hallucination_tie` says whether all the
    candidates tied (the 2-way question). `hallucinated` flags the candidates that
    hallucinate."""
    if tiers is not None:
        problem = tiers_problem(ranking, tiers)
        if problem:
            raise Invalid(problem)
        hallucination_tie = any(len(tier) > 1 for tier in tiers)
    with transaction.atomic():
        slots, stored = _begin_submission(annotator, assignment_id, Task.Kind.RANK)
        if stored is not None:
            return stored, False
        shown = [slot.candidate_id for slot in slots]
        if sorted(ranking) != sorted(shown):
            raise Invalid(f"the ranking must order exactly this task's candidates {sorted(shown)}")
        unknown = set(hallucinated) - set(shown)
        if unknown:
            raise Invalid(f"flagged candidates {sorted(unknown)} are not part of this task")
        groups = tiers if tiers is not None else default_tiers(ranking, hallucination_tie)
        judgement = _judgement(
            assignment_id, ranking, groups, hallucinated, rationale=rationale, time_spent_ms=time_spent_ms
        )
    return judgement, True


def _judgement(
    assignment_id: int,
    ranking: Sequence[int],
    tiers: Sequence[Sequence[int]],
    hallucinated: Sequence[int],
    *,
    rationale: str = "",
    time_spent_ms: int = 0,
) -> Judgement:
    """The one builder of a Judgement row, live or imported: best and worst from the
    ranking, the tie from Q1's groups, the flag of the rejected from the flagged ones."""
    flagged = sorted(set(hallucinated))
    return Judgement.objects.create(
        assignment_id=assignment_id,
        ranking=list(ranking),
        preferred_id=ranking[0],
        rejected_id=ranking[-1],
        hallucination_tie=any(len(tier) > 1 for tier in tiers),
        tiers=[list(tier) for tier in tiers],
        hallucinated=flagged,
        rejected_hallucinates=ranking[-1] in flagged,
        rationale=rationale,
        time_spent_ms=time_spent_ms,
    )


def _correction(
    assignment_id: int,
    candidate_id: int,
    original: str,
    corrected: str,
    spans: Sequence[span_diff.Span],
    categories: Sequence[str | None],
    *,
    no_hallucination: bool = False,
    suggestions: dict[str, list[int]] | None = None,
    time_spent_ms: int = 0,
) -> Correction:
    """The one builder of a Correction row, live or imported: the candidate's text is the
    original, each changed span carries its category (or None)."""
    return Correction.objects.create(
        assignment_id=assignment_id,
        candidate_id=candidate_id,
        original=original,
        corrected=corrected,
        no_hallucination=no_hallucination,
        spans=[span.as_dict() | {"category": category} for span, category in zip(spans, categories, strict=True)],
        suggestions=suggestions or {},
        time_spent_ms=time_spent_ms,
    )


def preview_spans(annotator: Any, assignment_id: int, corrected: str) -> list[dict[str, Any]]:
    """The changed spans the server would store for this correction (the page's live diff)."""
    slot = (
        TaskCandidate.objects.filter(task__assignments__pk=assignment_id, task__assignments__annotator=annotator)
        .select_related("task", "candidate")
        .first()
    )
    if slot is None:
        raise Assignment.DoesNotExist
    if slot.task.kind != Task.Kind.CORRECT:
        raise Refused("only a correction task has a diff")
    return [span.as_dict() for span in span_diff.changed_spans(slot.candidate.text, corrected)]


def submit_correction(
    annotator: Any,
    assignment_id: int,
    *,
    corrected: str | None,
    no_hallucination: bool = False,
    span_categories: Sequence[str | None] = (),
    suggestions: dict[str, list[int]] | None = None,
    time_spent_ms: int = 0,
) -> tuple[Correction, bool]:
    """Store an RLHF-V correction (docs/methods.md 1b): chosen = corrected, rejected = original.

    The changed spans are computed here from the two texts; `span_categories`, when given,
    has one error category (or None) per span, in order. `suggestions` records which of the
    candidate's machine suggestions the annotator accepted and rejected (the correction is
    theirs either way: the text they submit is the label)."""
    with transaction.atomic():
        slots, stored = _begin_submission(annotator, assignment_id, Task.Kind.CORRECT)
        if stored is not None:
            return stored, False
        candidate = slots[0]
        original = candidate.text
        if no_hallucination:
            if corrected is not None and corrected != original:
                raise Invalid("a response marked 'no hallucination' must be left unchanged")
            corrected, changed = original, []
        else:
            if corrected is None or not corrected.strip():
                raise Invalid("the corrected response is empty; correct the wrong words, do not delete everything")
            changed = span_diff.changed_spans(original, corrected)
            if not changed:
                raise Invalid("no word was changed; if nothing is wrong, mark it 'no hallucination'")
        if span_categories and len(span_categories) != len(changed):
            raise Invalid(
                f"{len(span_categories)} categories for {len(changed)} changed spans; "
                "the categories must follow the spans of the submitted text"
            )
        categories = list(span_categories) or [None] * len(changed)
        for category in categories:
            if category is not None and category not in Correction.Category.values:
                raise Invalid(f"unknown category {category!r}")
        answered = _suggestion_answers(candidate.candidate_id, suggestions or {})
        correction = _correction(
            assignment_id,
            candidate.candidate_id,
            original,
            corrected,
            changed,
            categories,
            no_hallucination=no_hallucination,
            suggestions=answered,
            time_spent_ms=time_spent_ms,
        )
    return correction, True


def _suggestion_answers(candidate_id: int, answers: dict[str, list[int]]) -> dict[str, list[int]]:
    """The annotator's answers to a candidate's machine suggestions, checked against them."""
    if not answers:
        return {}
    unknown = sorted(set(answers) - {"accepted", "rejected"})
    if unknown:
        raise Invalid(f"suggestions: expected 'accepted' and 'rejected' lists, not {', '.join(unknown)}")
    feedback = Candidate.objects.filter(pk=candidate_id).values_list("ai_feedback", flat=True).first()
    shown = len(Feedback.from_dict(feedback).suspected) if feedback else 0
    accepted, rejected = sorted(set(answers.get("accepted", []))), sorted(set(answers.get("rejected", [])))
    if any(index >= shown for index in accepted + rejected):
        raise Invalid(f"suggestions: the candidate had {shown} machine suggestion(s); an index is out of range")
    if set(accepted) & set(rejected):
        raise Invalid("suggestions: a suggestion cannot be both accepted and rejected")
    return {"accepted": accepted, "rejected": rejected}


def record_imported_label(round_: Round, prompt: Prompt, label: Any, *, annotator: Any) -> Assignment:
    """A label read from a file (annotation/data/released.py's Label), recorded as if `annotator`
    had submitted it: its candidates, a task with one submitted assignment, and a judgement
    (its ranking, Q1 groups and flags) or a correction (texts[1] corrects texts[0]; the
    server computes the spans as for a live correction, with the file's error types when it
    has one per span). Run inside the import's transaction."""
    candidates = add_candidates(round_, prompt, list(label.texts), model_version="imported", params={"row": label.row})
    kind = Task.Kind.RANK if label.kind == "rank" else Task.Kind.CORRECT
    task = Task.objects.create(round=round_, prompt=prompt, kind=kind, overlap=1, taken=1, origin=label.origin)
    TaskCandidate.objects.bulk_create(
        [TaskCandidate(task=task, candidate=c, position=i) for i, c in enumerate(candidates)]
    )
    now = timezone.now()
    submitted = Assignment.Status.SUBMITTED
    assignment = Assignment.objects.create(
        task=task, annotator=annotator, status=submitted, leased_at=now, expires_at=now, finished_at=now
    )
    ids = [c.pk for c in candidates]
    if kind == Task.Kind.RANK:
        ranking = [ids[i] for i in label.ranking]
        tiers = [[ids[i] for i in tier] for tier in label.tiers] or default_tiers(ranking, False)
        _judgement(assignment.pk, ranking, tiers, [ids[i] for i in label.hallucinated])
    else:
        original, corrected = candidates
        changed = span_diff.changed_spans(original.text, corrected.text)
        fits = label.categories and len(label.categories) == len(changed)
        categories = label.categories if fits else [None] * len(changed)
        _correction(assignment.pk, original.pk, original.text, corrected.text, changed, categories)
    return assignment
