"""The loop dashboard: the admin's landing page says where the loop stands.

What it reads, each a small query: the newest round (generation and labelling progress, the
annotators active in the last hour), the jobs queued or running, the last training runs with
their gate decisions, the per-round hallucination metrics (the base as round 0), and the
next thing to do. Figures are rounded to what they can tell (rates to 3 decimals, progress to
whole percents).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.urls import reverse
from django.utils import timezone

from annotation.administration import plots
from annotation.labeling.rounds import identical_ranking_counts, repeated_candidates
from annotation.models import Assignment, Correction, Job, Judgement, Round, RoundPrompt, Task, TrainingRun
from contract.comparison import criteria_of
from contract.comparison import summary as gate_summary
from contract.methods import CHAIR_I, CHAIR_S, COVERAGE, POPE_F1
from models.registry import Registry

RECENT_RUNS = 3
HALLUCINATION_METRICS = (CHAIR_I, CHAIR_S, POPE_F1, COVERAGE)


def _percent(done: int, total: int) -> int | None:
    return round(100 * done / total) if total else None


def round_state(round_: Round) -> dict[str, Any]:
    prompts = RoundPrompt.objects.filter(round=round_)
    generated = prompts.filter(status=RoundPrompt.Status.DONE).count()
    total_prompts = prompts.count()
    capacity = int(Task.objects.filter(round=round_).aggregate(total=Sum("overlap"))["total"] or 0)
    labels = (
        Judgement.objects.filter(assignment__task__round=round_).count()
        + Correction.objects.filter(assignment__task__round=round_).count()
    )
    since = timezone.now() - timedelta(hours=1)
    active = (
        Assignment.objects.filter(task__round=round_, finished_at__gte=since, status=Assignment.Status.SUBMITTED)
        .values("annotator")
        .distinct()
        .count()
    )
    return {
        "round": round_,
        "generated": generated,
        "prompts": total_prompts,
        "generated_percent": _percent(generated, total_prompts),
        "labels": labels,
        "capacity": capacity,
        "labelled_percent": _percent(labels, capacity),
        "active_annotators": active,
        "ai_labeller": round_.ai_labeller,
    }


def candidate_repeats(round_: Round) -> dict[str, Any]:
    """Identical candidates, per round (the dashboard and the quality report): the share of
    prompts whose candidates still repeat one another, the candidates drawn again to avoid
    it, and the ranking tasks with identical candidates made correction tasks or left out."""
    repeated = repeated_candidates(round_)
    return {
        **repeated,
        "percent": f"{100 * repeated['share']:.0f}%",
        **{f"rankings_{key}": value for key, value in identical_ranking_counts(round_).items()},
    }


def run_state(run: TrainingRun) -> dict[str, Any]:
    """A training run as the dashboard lists it, with its gate's decision in words."""
    gate = (run.steps.get("gate") or {}).get("detail") or {}
    decided = bool(criteria_of(gate))
    # The summary written when the gate decided (before `force`); a run from before it had one is said anew.
    text = (gate.get("summary") or gate_summary(gate)) if decided else None
    if decided and gate.get("forced"):
        text = f"{text} (deployed anyway: forced)"
    return {"run": run, "gate_passed": gate.get("passed"), "gate": text}


def next_action(current: Round | None, state: dict[str, Any] | None, running: list[Job]) -> dict[str, str]:
    """What to do next, as a sentence and, where the admin has a page for it, a link."""
    start = reverse("admin:annotation_round_start")
    if current is None:
        return {"text": "Start the first round.", "url": start, "label": "Start a round"}
    if current.status == Round.Status.DRAFT:
        return {
            "text": f"{current} is collecting its candidates; the generation job reports its progress.",
            "url": reverse("admin:annotation_job_changelist"),
            "label": "Watch the jobs",
        }
    if any(job.kind == Job.Kind.TRAIN for job in running):
        return {
            "text": f"{current} is being trained.",
            "url": reverse("admin:annotation_job_changelist"),
            "label": "Jobs",
        }
    if current.status == Round.Status.OPEN:
        assert state is not None
        if state["capacity"] and state["labels"] >= state["capacity"]:
            return {
                "text": f"{current} is fully labelled: train it, which opens the next round (check its quality first).",
                "url": reverse("admin:annotation_round_train", args=[current.number]),
                "label": "Train it",
            }
        return {
            "text": f"{current} is open for annotation; check its quality as labels come in.",
            "url": reverse("admin:annotation_round_quality", args=[current.number]),
            "label": "Quality report",
        }
    return {"text": f"{current} is frozen: start the next round.", "url": start, "label": "Start a round"}


def dashboard_context() -> dict[str, Any]:
    current = Round.objects.order_by("-number").first()
    # The current round's identical candidates: read from its candidates' texts, so only for
    # the one round the dashboard shows (the rounds API lists every round without them).
    state = round_state(current) | {"candidates": candidate_repeats(current)} if current is not None else None
    running = list(Job.objects.filter(status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).order_by("-created_at")[:10])
    runs = [run_state(run) for run in TrainingRun.objects.select_related("round").order_by("-created_at")[:RECENT_RUNS]]
    rows = version_rows(Registry(settings.FACTLOOP_MODEL_DIR))
    metrics = [
        {
            "round": r,
            "name": name,
            **{k: figure(m.get(k)) for k in HALLUCINATION_METRICS},
            "mean_words": "-" if m.get("mean_words") is None else f"{float(m['mean_words']):.1f}",
        }
        for r, name, m in rows
    ]
    return {
        "loop": {
            "round": state,
            "jobs": running,
            "runs": runs,
            "metrics": metrics,
            "chart": hallucination_chart(rows),
            "next": next_action(current, state, running),
        }
    }


def figure(value: Any) -> str:
    """A metric as the pages show it: rates to 3 decimals (a held-out set of hundreds of
    items tells no more), "-" for none."""
    if value is None:
        return "-"
    return f"{float(value):.3f}" if isinstance(value, float) else str(value)


def version_rows(registry: Registry) -> list[tuple[int, str, dict[str, Any]]]:
    """(round, version, metrics) of the policy versions: trained ones at their round, a base
    version (no round, no parent) that was evaluated (manage.py evaluate, train_round) at
    round 0; metrics from the newest evaluation."""
    rows = []
    for v in registry:
        if v.kind != "policy":
            continue
        metrics = registry.latest_metrics(v.name)
        if v.round is not None:
            rows.append((int(v.round), v.name, metrics))
        elif v.parent is None and registry.evaluations(v.name):
            rows.append((0, v.name, metrics))
    return sorted(rows, key=lambda row: (row[0], row[1]))


def hallucination_chart(rows: list[tuple[int, str, dict[str, Any]]]) -> str | None:
    return plots.lines(
        "Hallucination per round (round 0: the base)",
        [r for r, _, _ in rows],
        {name: [m.get(name) for _, _, m in rows] for name in HALLUCINATION_METRICS},
    )
