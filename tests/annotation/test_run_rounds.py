"""`manage.py run_rounds`: what it refuses, and waiting for real annotators' labels. The
simulated path runs in the whole-loop test (tests/e2e/test_loop.py, through the demo)."""

from __future__ import annotations

from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.labeling.rounds import freeze_round
from tests.annotation.test_annotation_api import client_for
from tests.factories import machine_feedback, make_round

pytestmark = pytest.mark.django_db


def run(**options: object) -> str:
    out = StringIO()
    call_command("run_rounds", stdout=out, **options)
    return out.getvalue()


def test_refusals() -> None:
    with pytest.raises(CommandError, match="--rounds must be at least 1"):
        run(rounds=0)
    with pytest.raises(CommandError, match="--labels-per-round must be at least 1"):
        run(rounds=1, labels_per_round=0)
    with pytest.raises(CommandError, match="--simulate needs at least 1 annotator"):
        run(rounds=1, simulate=0)
    with pytest.raises(CommandError, match="no round to run"):
        run(rounds=1)
    freeze_round(make_round(tasks=1))
    with pytest.raises(CommandError, match="is frozen"):
        run(rounds=1)


def test_it_waits_for_real_annotators_labels() -> None:
    make_round(tasks=2)
    with pytest.raises(CommandError, match="has 0 of 1 labels after --label-timeout"):
        run(rounds=1, labels_per_round=1, label_timeout=0.2, poll=0.05)


def test_the_metrics_page_draws_labels_per_round(admin_user: User) -> None:
    round_ = make_round(tasks=1)
    for candidate in round_.candidates.all():
        candidate.ai_feedback = machine_feedback(candidate.text)
        candidate.save()
    page = client_for(admin_user).get("/admin/annotation/round/metrics/").content.decode()
    assert "AI-labelled candidates" in page and "<td>2</td>" in page
    assert page.count("data:image/svg+xml;base64,") == 1  # labels per round (no labels yet, 2 AI-labelled)
