"""Quality control: gold accuracy, agreement between annotators, throughput, flags.

Every submitted label is reduced to one categorical value per (task, annotator), the thing
peers and gold answers can agree on:
- a ranking task: the position (A = 0, B = 1, ...) of the candidate ranked first, i.e. the
  answer to LLaVA-RLHF's question "which response hallucinates less" (docs/methods.md 1a);
- a correction task: whether the response needed a correction ("fix") or not ("ok").

The statistics are pure functions of those values (`krippendorff_alpha`, `cohen_kappa`,
`annotator_stats`); `round_quality` reads a round's labels and computes them.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from django.conf import settings

from annotation.models import Correction, Judgement, Round, Task, TaskCandidate
from contract.feedback import Feedback, agreement


@dataclass(frozen=True)
class Label:
    task: int
    annotator: str
    kind: str
    value: Hashable
    is_gold: bool
    gold_answer: Mapping[str, Any]
    time_spent_ms: int
    leased_at: Any
    finished_at: Any

    @property
    def gold_correct(self) -> bool | None:
        """Whether the label matches the task's known answer (None: no known answer)."""
        return gold_matches(self.kind, self.gold_answer, self.value) if self.is_gold else None


def gold_matches(kind: str, answer: Mapping[str, Any], value: Hashable) -> bool | None:
    if kind == Task.Kind.RANK and "best_positions" in answer:
        return value in answer["best_positions"]
    if kind == Task.Kind.CORRECT and "no_hallucination" in answer:
        return value == ("ok" if answer["no_hallucination"] else "fix")
    return None


def value_of_ranking(ranking: Sequence[int], positions: Mapping[int, int]) -> int:
    return positions[ranking[0]]


def value_of_correction(no_hallucination: bool) -> str:
    return "ok" if no_hallucination else "fix"


# ---------------------------------------------------------------------------------------
# Agreement coefficients


def krippendorff_alpha(units: Iterable[Sequence[Hashable]]) -> float | None:
    """Krippendorff's alpha for nominal data; `units` holds the values given to each unit
    (missing values simply absent). Units with fewer than two values are not pairable and
    are left out. None when it is undefined (fewer than two pairable values, or a single
    value used throughout, so no disagreement is expected).

    Coincidence-matrix form (K. Krippendorff, "Computing Krippendorff's Alpha-Reliability",
    2011, section C): o_ck = sum over units of (number of c-k pairs) / (m_u - 1),
    n_c = sum_k o_ck, n = sum_c n_c, and for nominal data
    alpha = 1 - (n - 1) * sum_{c != k} o_ck / sum_{c != k} n_c * n_k."""
    coincidences: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for values in units:
        m = len(values)
        if m < 2:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_c - 1) if c == k else n_c * n_k
                coincidences[c, k] += pairs / (m - 1)
    totals: dict[Hashable, float] = defaultdict(float)
    for (c, _), o in coincidences.items():
        totals[c] += o
    n = sum(totals.values())
    observed = sum(o for (c, k), o in coincidences.items() if c != k)
    expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n < 2 or expected == 0:
        return None
    return 1.0 - (n - 1) * observed / expected


def cohen_kappa(pairs: Sequence[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa for two raters over the items both labelled (J. Cohen, "A coefficient
    of agreement for nominal scales", 1960): (p_o - p_e) / (1 - p_e), with p_o the observed
    agreement and p_e = sum_c p_1(c) * p_2(c) the agreement expected by chance. None when
    undefined (no items, or p_e = 1)."""
    if not pairs:
        return None
    n = len(pairs)
    observed = sum(a == b for a, b in pairs) / n
    first = Counter(a for a, _ in pairs)
    second = Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected == 1:
        return None
    return (observed - expected) / (1 - expected)


# ---------------------------------------------------------------------------------------
# Per annotator and per round


@dataclass
class AnnotatorStats:
    annotator: str
    labels: int = 0
    gold_labels: int = 0
    gold_accuracy: float | None = None
    peer_agreement: float | None = None  # share of peers on the same task with the same value
    tasks_per_hour: float | None = None
    median_seconds: float | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)


@dataclass
class RoundQuality:
    rounds: list[int]
    labels: int
    alpha: dict[str, float | None]  # per task kind
    kappa: list[tuple[str, str, str, int, float | None]]  # kind, annotator a, annotator b, shared items, kappa
    annotators: list[AnnotatorStats]
    disagreements: list[int]  # task ids whose labels differ
    ai: AiAgreement | None = None  # how the AI labeller's suggestions agree with the people


@dataclass
class AiAgreement:
    """The AI labeller against the annotators, over the labels whose candidates it labelled.

    Corrections: `precision` is the share of its doubted claims the person changed,
    `recall` the share of the person's changed spans it had doubted (contract/feedback.py's
    `agreement`); `accepted`/`rejected` count what the pages' suggestions got. Rankings:
    `ranking_agreement` is the share of judgements whose first choice is the candidate the
    labeller scored best (judgements where its best is a tie do not count)."""

    corrections: int = 0
    precision: float | None = None
    recall: float | None = None
    accepted: int = 0
    rejected: int = 0
    rankings: int = 0
    ranking_agreement: float | None = None


def annotator_stats(
    labels: Sequence[Label],
    *,
    min_gold_accuracy: float,
    min_agreement: float,
    min_items: int,
) -> list[AnnotatorStats]:
    """Gold accuracy, agreement with peers, throughput and median time per annotator; an
    annotator is flagged when a measure backed by at least `min_items` labels is under its
    threshold."""
    by_task: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_task[label.task].append(label)
    mine: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        mine[label.annotator].append(label)
    out = []
    for annotator in sorted(mine):
        own = mine[annotator]
        stats = AnnotatorStats(annotator, labels=len(own))
        graded = [label.gold_correct for label in own if label.gold_correct is not None]
        stats.gold_labels = len(graded)
        if graded:
            stats.gold_accuracy = sum(graded) / len(graded)
        agreements = [
            peer.value == label.value for label in own for peer in by_task[label.task] if peer.annotator != annotator
        ]
        if agreements:
            stats.peer_agreement = sum(agreements) / len(agreements)
        stats.median_seconds = statistics.median(label.time_spent_ms for label in own) / 1000
        # Throughput over the annotator's working span: first lease to last submission.
        start = min(label.leased_at for label in own)
        end = max(label.finished_at for label in own)
        hours = (end - start).total_seconds() / 3600
        if hours > 0:
            stats.tasks_per_hour = len(own) / hours
        if len(graded) >= min_items and stats.gold_accuracy is not None and stats.gold_accuracy < min_gold_accuracy:
            stats.flags.append(f"gold accuracy {stats.gold_accuracy:.0%} < {min_gold_accuracy:.0%}")
        if len(agreements) >= min_items and stats.peer_agreement is not None and stats.peer_agreement < min_agreement:
            stats.flags.append(f"agreement with peers {stats.peer_agreement:.0%} < {min_agreement:.0%}")
        out.append(stats)
    return out


def read_labels(rounds: Sequence[int], *, gold_only: bool = False) -> list[Label]:
    """Every submitted label of the rounds (or only those of gold tasks), as categorical values."""
    scope: dict[str, Any] = {"task__round__number__in": rounds} | ({"task__is_gold": True} if gold_only else {})
    positions = {
        (task_id, candidate_id): position
        for task_id, candidate_id, position in TaskCandidate.objects.filter(**scope).values_list(
            "task_id", "candidate_id", "position"
        )
    }
    common = (
        "assignment__task_id",
        "assignment__annotator__username",
        "assignment__task__is_gold",
        "assignment__task__gold_answer",
        "time_spent_ms",
        "assignment__leased_at",
        "assignment__finished_at",
    )
    labels = []
    labelled = {f"assignment__{key}": value for key, value in scope.items()}
    judgements = Judgement.objects.filter(**labelled).order_by("assignment_id")
    for task, annotator, gold, answer, spent, leased, finished, ranking in judgements.values_list(*common, "ranking"):
        position = positions[task, ranking[0]]
        labels.append(Label(task, annotator, Task.Kind.RANK, position, gold, answer, spent, leased, finished))
    corrections = Correction.objects.filter(**labelled).order_by("assignment_id")
    for task, annotator, gold, answer, spent, leased, finished, ok in corrections.values_list(
        *common, "no_hallucination"
    ):
        value = value_of_correction(ok)
        labels.append(Label(task, annotator, Task.Kind.CORRECT, value, gold, answer, spent, leased, finished))
    return labels


def round_quality(rounds: Sequence[int], labels: Sequence[Label] | None = None) -> RoundQuality:
    """The quality report of one or more rounds, with the thresholds from settings."""
    labels = read_labels(rounds) if labels is None else labels
    by_task: dict[int, list[Label]] = defaultdict(list)
    for label in labels:
        by_task[label.task].append(label)
    alpha: dict[str, float | None] = {}
    kappa: list[tuple[str, str, str, int, float | None]] = []
    for kind in Task.Kind.values:
        units = [[label.value for label in group] for group in by_task.values() if group[0].kind == kind]
        if not units:
            continue
        alpha[kind] = krippendorff_alpha(units)
        shared: dict[tuple[str, str], list[tuple[Hashable, Hashable]]] = defaultdict(list)
        for group in by_task.values():
            if group[0].kind != kind:
                continue
            for one, other in combinations(sorted(group, key=lambda label: label.annotator), 2):
                shared[one.annotator, other.annotator].append((one.value, other.value))
        for (a, b), pairs in sorted(shared.items()):
            kappa.append((kind, a, b, len(pairs), cohen_kappa(pairs)))
    disagreements = sorted(task for task, group in by_task.items() if len({label.value for label in group}) > 1)
    stats = annotator_stats(
        labels,
        min_gold_accuracy=settings.FACTLOOP_QC_MIN_GOLD_ACCURACY,
        min_agreement=settings.FACTLOOP_QC_MIN_AGREEMENT,
        min_items=settings.FACTLOOP_QC_MIN_ITEMS,
    )
    return RoundQuality(sorted(rounds), len(labels), alpha, kappa, stats, disagreements, ai_agreement(rounds))


def ai_agreement(rounds: Sequence[int]) -> AiAgreement | None:
    """The AI labeller's agreement with the rounds' human labels; None without AI feedback."""
    corrections: list[tuple[Any, Any, Any]] = list(
        Correction.objects.filter(
            assignment__task__round__number__in=rounds, candidate__ai_feedback__isnull=False
        ).values_list("spans", "suggestions", "candidate__ai_feedback")
    )
    judgements = list(
        Judgement.objects.filter(assignment__task__round__number__in=rounds).values_list(
            "preferred_id", "assignment__task_id"
        )
    )
    # The judged tasks' candidates in one query, each scored once (a task judged by k
    # annotators shares its candidates).
    slots: dict[int, list[int]] = defaultdict(list)
    scores: dict[int, int] = {}
    shown_rows = TaskCandidate.objects.filter(task_id__in=[task for _, task in judgements]).values_list(
        "task_id", "candidate_id", "candidate__ai_feedback"
    )
    for task, candidate, stored in shown_rows:
        slots[task].append(candidate)
        if stored is not None and candidate not in scores:
            scores[candidate] = Feedback.from_dict(stored).score
    if not corrections and not scores:
        return None
    found = AiAgreement(corrections=len(corrections))
    if corrections:
        feedback = [Feedback.from_dict(item) for _, _, item in corrections]
        marked = [[(span["original_start"], span["original_end"]) for span in spans] for spans, _, _ in corrections]
        measured = agreement(feedback, marked)
        found.precision = measured["precision"] if measured["suspected"] else None
        found.recall = measured["recall"] if measured["marked"] else None
        found.accepted = sum(len(answers.get("accepted", [])) for _, answers, _ in corrections)
        found.rejected = sum(len(answers.get("rejected", [])) for _, answers, _ in corrections)
    agreed = counted = 0
    for preferred, task in judgements:
        shown = slots[task]
        if not shown or any(candidate not in scores for candidate in shown):
            continue
        score = {candidate: scores[candidate] for candidate in shown}
        best = max(score.values())
        if sum(value == best for value in score.values()) > 1:
            continue
        counted += 1
        agreed += score[preferred] == best
    found.rankings = counted
    found.ranking_agreement = agreed / counted if counted else None
    return found


def passing_annotators(rounds: Sequence[int] | None = None, *, min_gold_accuracy: float) -> set[str]:
    """The annotators whose gold accuracy (over `rounds`, or every round) is at least the
    threshold; an annotator who answered no gold task does not pass."""

    numbers = list(Round.objects.values_list("number", flat=True)) if rounds is None else list(rounds)
    graded: dict[str, list[bool]] = defaultdict(list)
    for label in read_labels(numbers, gold_only=True):
        correct = label.gold_correct
        if correct is not None:
            graded[label.annotator].append(correct)
    return {who for who, marks in graded.items() if sum(marks) / len(marks) >= min_gold_accuracy}
