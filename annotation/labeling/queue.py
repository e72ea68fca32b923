"""The annotation queue: leases on tasks, handed out fairly and without races.

Rules (each has a test in tests/annotation/test_queue.py):
- `next_assignment_for(annotator)` returns the annotator's live lease if they hold one (a
  retried or repeated request takes no second task), else leases the oldest task (lowest
  id: earlier rounds first) of an open round that still has a free slot and that this
  annotator has never been given.
- A task never has more than `overlap` (k) live leases plus submissions: the claim is the
  conditional UPDATE `taken = taken + 1 WHERE taken < overlap`, which only one of two racing
  claims can win for the last slot, on PostgreSQL and on SQLite alike.
- Never the same task twice to one annotator: a unique constraint on (task, annotator)
  holds whatever became of the first lease (submitted, skipped, expired).
- A lease expires after FACTLOOP_LEASE_MINUTES and gives its slot back when swept: every
  few seconds per process, and whenever a claim finds no free task. A skip gives the slot
  back at once. Submitting checks the expiry itself, so a late sweep never lets a dead
  lease submit.

How a claim avoids waiting: on PostgreSQL the candidate task is read with
`SELECT ... FOR UPDATE SKIP LOCKED`, so concurrent annotators take different tasks instead
of queueing on the same row. SQLite has no row locks; there FactLoop opens every
transaction with BEGIN IMMEDIATE (webapp.env), which takes the database's write lock first,
so claims run one at a time. Either way correctness rests on the conditional UPDATE (the
way healthchecks' `sendalerts` claims a check) and the unique constraints, not on the lock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists, F, OuterRef, QuerySet
from django.utils import timezone

from annotation.models import Assignment, Round, Task
from annotation.rules.errors import Busy, Refused

# Enough for any realistic contention: a retry happens only when another claim took the
# last slot of the chosen task between the read and the UPDATE (never on PostgreSQL, where
# the row is locked, nor on SQLite, where the transaction holds the write lock).
CLAIM_ATTEMPTS = 8
SWEEP_BATCH = 500
# How often each process sweeps expired leases on its own (besides when the pool looks dry).
SWEEP_EVERY = timedelta(seconds=5)
_last_sweep = {"at": datetime.min.replace(tzinfo=UTC)}


def lease_duration() -> timedelta:
    return timedelta(minutes=settings.FACTLOOP_LEASE_MINUTES)


def expire_leases(now: datetime | None = None) -> int:
    """Mark leases past their expiry as expired and give their slots back. Safe to run
    concurrently: each lease is moved by a conditional UPDATE that only one sweeper wins."""
    now = now or timezone.now()
    stale = list(
        Assignment.objects.filter(status=Assignment.Status.LEASED, expires_at__lte=now).values_list("pk", "task_id")[
            :SWEEP_BATCH
        ]
    )
    expired = 0
    for assignment_id, task_id in stale:
        with transaction.atomic():
            moved = Assignment.objects.filter(
                pk=assignment_id, status=Assignment.Status.LEASED, expires_at__lte=now
            ).update(status=Assignment.Status.EXPIRED, finished_at=now)
            if moved:
                Task.objects.filter(pk=task_id).update(taken=F("taken") - 1)
                expired += 1
    return expired


def _live_lease(annotator: Any, now: datetime) -> Assignment | None:
    """The annotator's live lease on a task of an open round. A lease whose round closed
    under it (frozen while leased) is ended here, giving its slot back."""
    lease = (
        Assignment.objects.select_related("task__round")
        .filter(annotator=annotator, status=Assignment.Status.LEASED, expires_at__gt=now)
        .first()
    )
    if lease is None or lease.task.round.status == Round.Status.OPEN:
        return lease
    with transaction.atomic():
        if Assignment.objects.filter(pk=lease.pk, status=Assignment.Status.LEASED).update(
            status=Assignment.Status.EXPIRED, finished_at=now
        ):
            Task.objects.filter(pk=lease.task_id).update(taken=F("taken") - 1)
    return None


def current_assignment(annotator: Any) -> Assignment | None:
    """The annotator's live lease, if any; never leases a new task."""
    return _live_lease(annotator, timezone.now())


def _free_task_ids(annotator: Any) -> QuerySet[Task]:
    open_rounds = Round.objects.filter(status=Round.Status.OPEN).values("pk")
    seen = Assignment.objects.filter(task=OuterRef("pk"), annotator=annotator)
    # in_open_round picks the index (see Task); the round's own status stays the rule, for a
    # task whose copy of it was set in the instant before its round froze.
    free = Task.objects.filter(in_open_round=True, round__in=open_rounds, taken__lt=F("overlap"))
    return free.exclude(Exists(seen)).order_by("id")


def _claim(annotator: Any, now: datetime) -> Assignment | None:
    """Lease one free task in its own transaction; the new assignment, or None when there
    is no work left for this annotator."""
    for _ in range(CLAIM_ATTEMPTS):
        with transaction.atomic():
            candidates = _free_task_ids(annotator)
            if connection.features.has_select_for_update_skip_locked:
                candidates = candidates.select_for_update(skip_locked=True, of=("self",))
            task_id = candidates.values_list("pk", flat=True).first()
            if task_id is None:
                return None
            if not Task.objects.filter(pk=task_id, taken__lt=F("overlap")).update(taken=F("taken") + 1):
                continue  # another claim took the last slot first
            return Assignment.objects.create(
                task_id=task_id, annotator=annotator, leased_at=now, expires_at=now + lease_duration()
            )
    raise Busy("the queue is too busy right now; try again")


def next_assignment_for(annotator: Any) -> Assignment | None:
    """The annotator's live lease, or a new one on the next free task; None when no task
    needs them."""
    now = timezone.now()
    if now - _last_sweep["at"] >= SWEEP_EVERY:
        _last_sweep["at"] = now
        expire_leases(now)
    # Claim straight away: holding a live lease already is the rare case (a reload, a
    # retried request), and then the one-lease-per-annotator constraint refuses the claim,
    # rolling it back whole, slot included. That saves a query on every common `next`.
    for _ in range(2):
        try:
            assignment = _claim(annotator, now)
        except IntegrityError:
            current = _live_lease(annotator, now)
            if current is not None:
                return current
            expire_leases(now)  # the lease in the way has just run out
            continue
        if assignment is None and expire_leases(now):
            continue  # expired leases gave slots back: look again
        return assignment
    return _claim(annotator, now)


def skip(annotator: Any, assignment_id: int) -> Assignment:
    """Give a leased task back to the pool; this annotator will not be offered it again.
    Skipping an assignment already skipped returns it unchanged."""
    now = timezone.now()
    with transaction.atomic():
        assignment = own_assignment(annotator, assignment_id, lock=True)
        if assignment.status == Assignment.Status.SKIPPED:
            return assignment
        if assignment.status != Assignment.Status.LEASED:
            raise Refused(f"this assignment is already {assignment.status}; only a live lease can be skipped")
        Assignment.objects.filter(pk=assignment.pk).update(status=Assignment.Status.SKIPPED, finished_at=now)
        Task.objects.filter(pk=assignment.task_id).update(taken=F("taken") - 1)
    assignment.status = Assignment.Status.SKIPPED
    assignment.finished_at = now
    return assignment


def own_assignment(annotator: Any, assignment_id: int, *, lock: bool = False) -> Assignment:
    """The annotator's own assignment; anyone else's raises Assignment.DoesNotExist, exactly
    as a missing one does, so ids of other people's work reveal nothing."""
    queryset = Assignment.objects.select_related("task__round")
    if lock:
        queryset = queryset.select_for_update(of=("self",))
    return queryset.get(pk=assignment_id, annotator=annotator)


def check_live(assignment: Assignment, now: datetime) -> None:
    """Refuse work on a lease that is over or on a round that is no longer open."""
    if assignment.status in (Assignment.Status.SKIPPED, Assignment.Status.EXPIRED):
        raise Refused(f"this assignment was {assignment.status}; ask for the next one")
    if assignment.expires_at <= now:
        raise Refused(
            f"the lease on this task expired at {assignment.expires_at:%Y-%m-%d %H:%M:%S %Z}; "
            "it went back to the pool. Ask for the next one."
        )
    if assignment.task.round.status != Round.Status.OPEN:
        raise Refused(f"{assignment.task.round} is {assignment.task.round.status}; it takes no more labels")
