"""The loop dashboard, the admin's landing page: where the loop stands and what to do next."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotation.labeling import queue
from annotation.labeling.rounds import freeze_round
from annotation.labeling.submissions import submit_judgement
from annotation.models import Job, TrainingRun
from contract.comparison import summary
from models.registry import Registry
from tests.annotation.test_annotation_api import client_for
from tests.factories import make_job, make_round

pytestmark = pytest.mark.django_db


def page_of(user: User) -> str:
    return client_for(user).get("/admin/").content.decode()


def test_a_fresh_install_is_told_to_start_a_round(admin_user: User, settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    page = page_of(admin_user)
    assert 'data-testid="dashboard"' in page and "Start the first round." in page
    assert 'href="/admin/annotation/round/start/"' in page
    assert "No round has been trained yet." in page and "No version has been evaluated yet." in page
    assert "Annotation" in page or "FactLoop" in page  # the model list is still there, below


def test_an_open_round_its_progress_jobs_runs_and_metrics(
    admin_user: User, annotator: User, settings: Any, tmp_path: Path
) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("tiny-base", base_model="base")
    registry.record_evaluation(
        "tiny-base", {"metrics": {"chair_i": 0.08612440191387559, "pope_f1": 1.0, "coverage": 0.8911}}
    )
    registry.register("round-1-ddpo", base_model="base", parent="tiny-base", round=1, metrics={"chair_i": 0.0213})
    trained = make_round(tasks=1)
    freeze_round(trained)
    TrainingRun.objects.create(
        round=trained,
        method="ddpo",
        work_dir=str(tmp_path),
        status=TrainingRun.Status.SUCCEEDED,
        version="round-1-ddpo",
        deployed=True,
        steps={
            "gate": {
                "detail": {
                    "metric": "chair_i",
                    "passed": True,
                    "worse_by": -0.0648,
                    "worse_by_interval": [-0.09, -0.04],
                }
            }
        },
    )
    current = make_round(tasks=3)
    refused = {
        "metric": "coverage",
        "direction": "higher",
        "new": 0.8,
        "current": 0.89,
        "worse_by": 0.09,
        "worse_by_interval": [0.05, 0.13],
        "margin": 0.0,
        "passed": False,
    }
    decision = {"criteria": [refused], "passed": False}
    TrainingRun.objects.create(
        round=current,
        method="dpo",
        work_dir=str(tmp_path),
        status=TrainingRun.Status.SUCCEEDED,
        steps={"gate": {"detail": {**decision, "summary": summary(decision), "passed": True, "forced": True}}},
    )
    lease = queue.next_assignment_for(annotator)
    assert lease is not None
    submit_judgement(annotator, lease.pk, ranking=[s.candidate_id for s in lease.task.slots.all()])
    make_job(kind=Job.Kind.EXPORT, queue="export", status=Job.Status.RUNNING, progress_done=2, progress_total=5)

    page = page_of(admin_user)
    assert f"{current} is open for annotation" in page
    assert 'data-testid="labelled">1 / 3' in page and "33%" in page
    assert 'data-testid="active">1<' in page
    assert '<progress max="5" value="2"></progress> 2 / 5' in page
    # A decision from before the gate took several metrics, said as a person would.
    assert "passed: better on CHAIR_i by 0.065 (95% 0.040 to 0.090)" in page
    # A refusal says what was worse; a forced deployment says so.
    assert "refused: worse on coverage by 0.090 (95% 0.050 to 0.130) (deployed anyway: forced)" in page
    assert "<td>0.891</td>" in page  # the base's coverage
    run = TrainingRun.objects.get(version="round-1-ddpo")
    assert f'href="/admin/annotation/trainingrun/{run.pk}/change/"' in page  # each run links to its steps
    assert "<td>0.086</td>" in page and "<td>0.021</td>" in page  # base at round 0, rounded
    assert "0.08612440191387559" not in page
    assert "data:image/svg+xml;base64," in page  # the per-round plot


def test_only_admins_see_it(annotator: User) -> None:
    response = client_for(annotator).get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
