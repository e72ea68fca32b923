"""Rounds and what they hold: a round created (a draft, or one of imported labels), its
prompts, candidates, tasks and gold answers, and its life (open, frozen). Starting a round
and generating its candidates is the loop's (annotation.loop.generation)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Max
from django.utils import timezone

from annotation.models import (
    AuditEvent,
    Candidate,
    Dataset,
    Prompt,
    Round,
    RoundPrompt,
    Task,
    TaskCandidate,
)
from annotation.rules import audit
from annotation.rules.datasets import default_heldout


def create_round(*, policy_version: str = "", heldout: Dataset | None = None) -> Round:
    """A new draft round numbered after the last one. It records the held-out dataset its
    training will be evaluated on: `heldout`, else the previous round's, else the only one."""
    with transaction.atomic():
        last = Round.objects.select_for_update().aggregate(last=Max("number"))["last"] or 0
        previous = Round.objects.filter(number=last).first()
        heldout = heldout or default_heldout(previous)
        return Round.objects.create(number=last + 1, policy_version=policy_version, heldout=heldout)


def create_imported_round(source: str, kinds: Sequence[str], candidates: int = 2) -> Round:
    """A new round that holds labels imported from a file: frozen from the start (its
    labels are final), with tasks of `kinds` over up to `candidates` candidates."""
    round_ = create_round(policy_version=source[:255])
    round_.status, round_.frozen_at = Round.Status.FROZEN, timezone.now()
    round_.task_kinds, round_.candidates_per_prompt = list(kinds), candidates
    round_.save(update_fields=["status", "frozen_at", "task_kinds", "candidates_per_prompt"])
    audit.record(AuditEvent.Action.IMPORT, round_, source=source)
    return round_


def add_candidates(
    round_: Round,
    prompt: Prompt,
    texts: Sequence[str],
    *,
    model_version: str = "",
    params: dict[str, Any] | None = None,
) -> list[Candidate]:
    """Append candidates to a prompt in a round, numbered after the ones it has."""
    with transaction.atomic():
        first = (Candidate.objects.filter(round=round_, prompt=prompt).aggregate(last=Max("index"))["last"] or -1) + 1
        return Candidate.objects.bulk_create(
            Candidate(
                round=round_,
                prompt=prompt,
                index=first + offset,
                text=text,
                model_version=model_version or round_.policy_version,
                params=params or {},
            )
            for offset, text in enumerate(texts)
        )


def gold_answer_problem(kind: str, answer: Any, candidates: int) -> str | None:
    """Why `answer` is not a valid known answer for a task of `kind` over `candidates`
    candidates, or None. Answers are by position: rank {"best_positions": [0, ...]} (the
    candidates with the fewest hallucinations; several when they tie), correct
    {"no_hallucination": true|false}."""
    if not isinstance(answer, dict):
        return "a gold answer is a JSON object"
    if kind == Task.Kind.RANK:
        best = answer.get("best_positions")
        if set(answer) != {"best_positions"} or not isinstance(best, list) or not best:
            return 'a ranking task\'s answer is {"best_positions": [positions of the best candidates]}'
        if any(not isinstance(p, int) or isinstance(p, bool) or not 0 <= p < candidates for p in best):
            return f"best_positions must be positions from 0 to {candidates - 1}"
        return None
    if set(answer) != {"no_hallucination"} or not isinstance(answer["no_hallucination"], bool):
        return 'a correction task\'s answer is {"no_hallucination": true or false}'
    return None


def gold_count(regular: int, rate: float) -> int:
    """Gold tasks to add to `regular` tasks so that they are `rate` of all of them."""
    if not 0 <= rate < 1:
        raise ValidationError("the gold rate is a share from 0 to below 1")
    return round(regular * rate / (1 - rate))


def _gold_copies(round_: Round, kind: str, size: int, wanted: int) -> list[tuple[Task, list[Candidate]]]:
    """Copies, into this round, of `wanted` tasks with known answers from earlier rounds (gold
    or adjudicated), picked at random but reproducibly (seeded by the round number). The
    copies' candidates are new rows of this round marked {"gold_of": original task id}."""
    if wanted <= 0:
        return []
    pool = list(
        Task.objects.filter(kind=kind, round__number__lt=round_.number, is_gold=False)
        .exclude(gold_answer={})
        .annotate(n=Count("slots"))
        .filter(n=size)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    chosen = sorted(random.Random(round_.number).sample(pool, min(wanted, len(pool))))
    copies = []
    next_index: dict[int, int] = {}
    for original in Task.objects.filter(pk__in=chosen).order_by("pk"):
        if original.prompt_id not in next_index:
            last = Candidate.objects.filter(round=round_, prompt_id=original.prompt_id).aggregate(m=Max("index"))["m"]
            next_index[original.prompt_id] = (last if last is not None else -1) + 1
        candidates = []
        for slot in TaskCandidate.objects.filter(task=original).select_related("candidate").order_by("position"):
            candidates.append(
                Candidate(
                    round=round_,
                    prompt_id=original.prompt_id,
                    index=next_index[original.prompt_id],
                    text=slot.candidate.text,
                    model_version=slot.candidate.model_version,
                    params={"gold_of": original.pk},
                )
            )
            next_index[original.prompt_id] += 1
        task = Task(
            round=round_,
            prompt_id=original.prompt_id,
            kind=kind,
            is_gold=True,
            gold_answer=original.gold_answer,
            in_open_round=round_.status == Round.Status.OPEN,
        )
        copies.append((task, candidates))
    return copies


def create_tasks(
    round_: Round,
    *,
    kind: str,
    overlap: int = 1,
    per_task: int = 2,
    gold_rate: float = 0.0,
    prompts: set[int] | None = None,
) -> list[Task]:
    """Tasks over the round's candidates that no task of this kind covers yet (so it can be
    called again after more candidates arrive): a rank task per `per_task` candidates of a
    prompt (a group whose candidates are all the same answer gets none: see
    `_identical_rankings`, whose correction tasks are returned too), a correct task per
    candidate; with `prompts`, only over those prompts' candidates (active selection: the
    rest are left to the AI labeller).

    With `gold_rate`, copies of tasks with known answers from earlier rounds are mixed in,
    spread evenly through the queue (it hands out tasks oldest first), so that they make up
    that share of the new tasks, as far as the pool of known answers allows."""
    if kind not in Task.Kind.values:
        raise ValidationError(f"unknown task kind {kind!r}; expected one of {', '.join(Task.Kind.values)}")
    if overlap < 1:
        raise ValidationError("overlap must be at least 1")
    if kind == Task.Kind.RANK and per_task < 2:
        raise ValidationError("a ranking task needs at least 2 candidates")
    size = per_task if kind == Task.Kind.RANK else 1
    covered = TaskCandidate.objects.filter(task__round=round_, task__kind=kind).values("candidate_id")
    free = (
        Candidate.objects.filter(round=round_)
        .exclude(pk__in=covered)
        .exclude(params__has_key="gold_of")
        .order_by("prompt_id", "index")
    )
    if prompts is not None:
        free = free.filter(prompt_id__in=prompts)
    by_prompt: dict[int, list[Candidate]] = defaultdict(list)
    for candidate in free:
        by_prompt[candidate.prompt_id].append(candidate)
    is_open = round_.status == Round.Status.OPEN
    regular = [
        (
            Task(round=round_, prompt_id=prompt_id, kind=kind, overlap=overlap, in_open_round=is_open),
            group[i : i + size],
        )
        for prompt_id, group in by_prompt.items()
        for i in range(0, len(group) - size + 1, size)
    ]
    identical: list[list[Candidate]] = []
    if kind == Task.Kind.RANK:
        # A ranking of identical responses is a tie by construction: no ranking task.
        distinct = [len({distinct_key(c.text) for c in group}) >= 2 for _, group in regular]
        identical = [group for (_, group), ok in zip(regular, distinct, strict=True) if not ok]
        regular = [item for item, ok in zip(regular, distinct, strict=True) if ok]
    with transaction.atomic():
        converted = _identical_rankings(round_, identical, overlap) if identical else []
        gold = _gold_copies(round_, kind, size, gold_count(len(regular), gold_rate))
        Candidate.objects.bulk_create([c for _, candidates in gold for c in candidates])
        for task, _ in gold:
            task.overlap = overlap
        # Gold task i goes after regular task floor((i + 1/2) * len(regular) / len(gold)).
        merged: list[tuple[Task, list[Candidate]]] = []
        g = 0
        for j, item in enumerate(regular):
            merged.append(item)
            while g < len(gold) and (g + 0.5) * len(regular) / len(gold) < j + 1:
                merged.append(gold[g])
                g += 1
        merged.extend(gold[g:])
        tasks = Task.objects.bulk_create([task for task, _ in merged])
        TaskCandidate.objects.bulk_create(
            TaskCandidate(task=task, candidate=candidate, position=position)
            for task, (_, group) in zip(tasks, merged, strict=True)
            for position, candidate in enumerate(group)
        )
    return tasks + converted


def distinct_key(text: str) -> str:
    """What makes two responses the same answer: their words, whitespace and case aside."""
    return " ".join(text.split()).casefold()


def _identical_rankings(round_: Round, groups: list[list[Candidate]], overlap: int) -> list[Task]:
    """Ranking groups whose candidates are all the same answer: with the round's "convert", a
    correction task of the group's first candidate (unless one covers it already, or the
    round makes correction tasks of every candidate anyway), else left out; which candidates
    went which way is kept in the round's task report (each once, so making the tasks again
    counts nothing twice)."""
    corrected = set(
        TaskCandidate.objects.filter(task__round=round_, task__kind=Task.Kind.CORRECT).values_list(
            "candidate_id", flat=True
        )
    )
    report = Round.objects.select_for_update().get(pk=round_.pk).task_report or {}
    seen = report.get("identical_rankings", {"converted": [], "dropped": []})
    handled = set(seen["converted"]) | set(seen["dropped"])
    is_open = round_.status == Round.Status.OPEN
    made = []
    for group in groups:
        first = group[0]
        if first.pk in handled:
            continue
        # A round that makes correction tasks too gives the candidate its own (made next).
        also_corrected = Task.Kind.CORRECT in (round_.task_kinds or [])
        if round_.identical_rankings == "convert" and first.pk not in corrected and not also_corrected:
            task = Task.objects.create(
                round=round_, prompt_id=first.prompt_id, kind=Task.Kind.CORRECT, overlap=overlap, in_open_round=is_open
            )
            TaskCandidate.objects.create(task=task, candidate=first, position=0)
            seen["converted"].append(first.pk)
            made.append(task)
        else:
            seen["dropped"].append(first.pk)
    report["identical_rankings"] = seen
    Round.objects.filter(pk=round_.pk).update(task_report=report)
    round_.task_report = report
    return made


def repeated_candidates(round_: Round) -> dict[str, float]:
    """The round's candidates that repeat another of their prompt's (whitespace and case
    aside), after generation asked again: prompts with several candidates, how many of them
    still hold a repeat and the share, and the candidates generation drew again."""
    by_prompt: dict[int, list[str]] = defaultdict(list)
    redraws = 0
    for prompt_id, text, params in (
        Candidate.objects.filter(round=round_)
        .exclude(params__has_key="gold_of")
        .values_list("prompt_id", "text", "params")
    ):
        by_prompt[prompt_id].append(distinct_key(text))
        redraws += int((params or {}).get("redraws", 0))
    several = [keys for keys in by_prompt.values() if len(keys) > 1]
    repeated = sum(1 for keys in several if len(set(keys)) < len(keys))
    return {
        "prompts": len(several),
        "repeated": repeated,
        "share": repeated / len(several) if several else 0.0,
        "redraws": redraws,
    }


def identical_ranking_counts(round_: Round) -> dict[str, int]:
    """How many ranking tasks with identical candidates became correction tasks, and how many
    were left out (a candidate a correction task already covered counts as left out)."""
    seen = (round_.task_report or {}).get("identical_rankings", {})
    return {"converted": len(seen.get("converted", [])), "dropped": len(seen.get("dropped", []))}


def mark_gold(task: Task, answer: dict[str, Any]) -> Task:
    """Make a task of this round a gold task with a known answer (e.g. from an oracle)."""
    problem = gold_answer_problem(task.kind, answer, task.slots.count())
    if problem:
        raise ValidationError(problem)
    Task.objects.filter(pk=task.pk).update(is_gold=True, gold_answer=answer)
    task.is_gold, task.gold_answer = True, answer
    return task


def adjudicate(task: Task, answer: dict[str, Any], *, by: Any) -> Task:
    """An admin's answer for a task the annotators disagreed on. It is kept on the task, and
    the task joins the pool from which later rounds draw their gold tasks."""
    if task.is_gold:
        raise ValidationError("a gold task already has its answer")
    problem = gold_answer_problem(task.kind, answer, task.slots.count())
    if problem:
        raise ValidationError(problem)
    now = timezone.now()
    Task.objects.filter(pk=task.pk).update(gold_answer=answer, adjudicated_by=by, adjudicated_at=now)
    task.gold_answer, task.adjudicated_by, task.adjudicated_at = answer, by, now
    return task


def freeze_round(round_: Round) -> Round:
    """open or draft -> frozen: no more labels; its labels are final. Leases still out are
    ended when their holder next asks (annotation.labeling.queue)."""
    now = timezone.now()
    with transaction.atomic():
        if (
            not Round.objects.filter(pk=round_.pk)
            .exclude(status=Round.Status.FROZEN)
            .update(status=Round.Status.FROZEN, frozen_at=now)
        ):
            raise ValidationError(f"{round_} is already frozen")
        Task.objects.filter(round=round_, in_open_round=True).update(in_open_round=False)
    round_.status, round_.frozen_at = Round.Status.FROZEN, now
    audit.record(AuditEvent.Action.ROUND, round_, change="frozen")
    return round_


def add_prompts_to_round(round_: Round, prompts: Sequence[Prompt]) -> int:
    """Put prompts in a round for candidate generation (again is harmless); how many were new."""
    with transaction.atomic():
        before = RoundPrompt.objects.filter(round=round_).count()
        RoundPrompt.objects.bulk_create(
            [RoundPrompt(round=round_, prompt=prompt) for prompt in prompts], ignore_conflicts=True
        )
        return RoundPrompt.objects.filter(round=round_).count() - before


def open_round(round_: Round) -> Round:
    """draft -> open: its tasks are handed out from now on."""
    with transaction.atomic():
        if not Round.objects.filter(pk=round_.pk, status=Round.Status.DRAFT).update(status=Round.Status.OPEN):
            round_.refresh_from_db()
            raise ValidationError(f"{round_} is {round_.status}; only a draft round can be opened")
        Task.objects.filter(round=round_).update(in_open_round=True)
    round_.status = Round.Status.OPEN
    audit.record(AuditEvent.Action.ROUND, round_, change="opened")
    return round_
