"""The admin's own pages: start a round, import an upload, export as a job with progress,
quality and adjudication, and the metrics plots."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User

from annotation.data.images import add_prompt
from annotation.labeling import queue
from annotation.labeling.rounds import mark_gold
from annotation.labeling.submissions import submit_judgement
from annotation.models import Dataset, Job, Judgement, Prompt, Round, RoundPrompt, Task, TrainingRun
from annotation.worker.tasks import export_dataset, import_archive
from models.registry import Registry
from tests.annotation.test_pages import client_for
from tests.factories import make_image, make_round, png_bytes, zip_of

pytestmark = pytest.mark.django_db


def test_only_admins_reach_the_admin_pages(annotator: User) -> None:
    make_round(tasks=1)
    client = client_for(annotator)
    for url in (
        "/admin/annotation/round/start/",
        "/admin/annotation/round/1/quality/",
        "/admin/annotation/round/metrics/",
    ):
        assert client.get(url).status_code == 302  # to the admin login
    assert not Round.objects.filter(number=2).exists()


def test_start_a_round_from_the_admin(
    admin_user: User, django_capture_on_commit_callbacks: Any, settings: Any, tmp_path: Path
) -> None:
    from models.registry import Registry

    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    Registry(settings.FACTLOOP_MODEL_DIR).register("base", base_model="llava-hf/llava-1.5-7b-hf")
    image = make_round(tasks=2).tasks.first().prompt.image  # type: ignore[union-attr]
    for n in range(3):
        add_prompt(image, f"New prompt {n}.")
    client = client_for(admin_user)
    assert "Start a round" in client.get("/admin/annotation/round/start/").content.decode()
    form = {
        "policy_version": "base",
        "task_kinds": ["rank", "correct"],
        "candidates_per_prompt": 2,
        "overlap": 2,
        "gold_rate": 0.1,
        "split": "train",
        "only_new": "on",
        "limit": 2,
        "temperature": 0.7,
        "max_tokens": 64,
    }
    refused = client.post("/admin/annotation/round/start/", form | {"policy_version": "no-such-version"})
    assert refused.status_code == 200 and "no-such-version" in refused.content.decode()
    with django_capture_on_commit_callbacks(execute=False):
        response = client.post("/admin/annotation/round/start/", form)
    assert response.status_code == 302
    round_ = Round.objects.get(number=2)
    assert (round_.task_kinds, round_.overlap, round_.gold_rate, round_.open_when_ready) == (
        ["rank", "correct"],
        2,
        0.1,
        True,
    )
    assert round_.sampling == {"temperature": 0.7, "max_tokens": 64}
    # Only the prompts no round used, oldest first, at most 2.
    texts = sorted(RoundPrompt.objects.filter(round=round_).values_list("prompt__text", flat=True))
    assert texts == ["New prompt 0.", "New prompt 1."]
    assert Job.objects.get(kind=Job.Kind.GENERATE).params == {"round_id": round_.pk}


def test_import_an_upload_as_a_job_and_refuse_a_bad_archive(admin_user: User, settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_EXPORT_DIR = tmp_path / "exports"
    client = client_for(admin_user)
    manifest = b'{"image": "pics/a.png", "prompt": "Describe it."}\n{"image": "pics/gone.png", "prompt": "x"}\n'
    upload = zip_of({"data/prompts.jsonl": manifest, "data/pics/a.png": png_bytes()})
    page = client.post("/admin/annotation/prompt/import/", {"kind": "prompts", "archive": upload})
    job = Job.objects.get(kind=Job.Kind.IMPORT)
    assert page.status_code == 302 and job.queue == "export" and job.status == Job.Status.QUEUED
    assert not Prompt.objects.exists()  # the request only spooled it
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.FAILED and "row 2: missing file" in job.error and not Prompt.objects.exists()
    assert not list((tmp_path / "exports" / "uploads").iterdir())  # a content failure discards the upload
    upload = zip_of({"data/prompts.jsonl": manifest, "data/pics/a.png": png_bytes()})
    client.post("/admin/annotation/prompt/import/", {"kind": "prompts", "archive": upload, "skip_bad": "on"})
    job = Job.objects.filter(kind=Job.Kind.IMPORT).latest("pk")
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and list(Prompt.objects.values_list("text", flat=True)) == [
        "Describe it."
    ]
    assert (job.progress_done, job.progress_total) == (4, 4)  # two rows, each checked and written
    # An archive that writes outside its folder, or no zip at all, is refused at upload: no job.
    jobs_before = Job.objects.count()
    evil = zip_of({"../../escape.jsonl": b"{}", "prompts.jsonl": manifest})
    refused = client.post("/admin/annotation/prompt/import/", {"kind": "prompts", "archive": evil})
    assert refused.status_code == 200 and "outside the import folder" in refused.content.decode()
    not_zip = io.BytesIO(b"plain text")
    not_zip.name = "x.zip"
    text = client.post("/admin/annotation/prompt/import/", {"kind": "prompts", "archive": not_zip}).content.decode()
    assert "not a zip archive" in text and Job.objects.count() == jobs_before
    # Labels in the llava-rlhf layout become a frozen round.
    entry = {
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}],
        "output_1": {"from": "llava", "value": "A ball."},
        "output_2": {"from": "llava", "value": "A <script>kite</script>."},
        "preference": 1,
    }
    upload = zip_of({"prefs.json": json.dumps([entry]).encode(), "a.png": png_bytes()})
    assert client.post("/admin/annotation/prompt/import/", {"kind": "llava-rlhf", "archive": upload}).status_code == 302
    job = Job.objects.filter(kind=Job.Kind.IMPORT).latest("pk")
    import_archive.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED and job.result["round"] == 1
    assert Judgement.objects.get().assignment.task.round.status == Round.Status.FROZEN
    assert Judgement.objects.get().assignment.annotator.username == f"import-{admin_user.username}"


def test_export_runs_as_a_job_with_progress(admin_user: User, annotator: User, settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_EXPORT_DIR = tmp_path / "exports"
    make_round(tasks=3)
    while (lease := queue.next_assignment_for(annotator)) is not None:
        ids = [slot.candidate_id for slot in lease.task.slots.all()]
        submit_judgement(annotator, lease.pk, ranking=ids)
    client = client_for(admin_user)
    assert 'value="1" selected' in client.get("/admin/annotation/round/export/?rounds=1").content.decode()
    bad = client.post("/admin/annotation/round/export/", {"format": "factloop", "rounds": [1], "aggregate": "majority"})
    assert "aggregate applies to the pair formats" in bad.content.decode() and not Job.objects.exists()
    response = client.post(
        "/admin/annotation/round/export/", {"format": "llava-rlhf", "rounds": [1], "aggregate": "none"}
    )
    job = Job.objects.get(kind=Job.Kind.EXPORT)
    assert response.status_code == 302 and job.queue == "export"
    export_dataset.apply(args=(job.pk,))
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (job.progress_done, job.progress_total) == (3, 3)
    out = Path(job.result["out"])
    assert job.result["pairs"] == 3 and len(json.loads((out / "llava_rlhf.json").read_text())) == 3
    assert json.loads((out / "manifest.json").read_text())["format"] == "llava-rlhf"


def test_quality_page_flags_and_adjudication(admin_user: User, annotator: User, second_annotator: User) -> None:
    round_ = make_round(tasks=6, overlap=2, texts=["Fine <b>answer</b>.", "Other answer."])
    for task in round_.tasks.order_by("pk"):
        mark_gold(task, {"best_positions": [0]})
    for user, pick in ((annotator, 0), (second_annotator, 1)):
        while (lease := queue.next_assignment_for(user)) is not None:
            ids = [slot.candidate_id for slot in lease.task.slots.all()]
            submit_judgement(user, lease.pk, ranking=[ids[pick], ids[1 - pick]])
    client = client_for(admin_user)
    page = client.get(f"/admin/annotation/round/{round_.number}/quality/").content.decode()
    assert "gold accuracy 0% &lt; 80%" in page and "data:image/svg+xml;base64," in page
    assert page.count('class="flagged"') == 2  # both disagree with their only peer; bea fails gold too
    adjudicate = f"/admin/annotation/round/{round_.number}/adjudicate/"
    # Gold tasks already have their answer: nothing to adjudicate among them.
    assert "Nothing to adjudicate" in client.get(adjudicate).content.decode()
    Task.objects.filter(round=round_).update(is_gold=False, gold_answer={})
    page = client.get(adjudicate).content.decode()
    assert "Fine &lt;b&gt;answer&lt;/b&gt;." in page and "<b>answer</b>" not in page
    disputed = Task.objects.filter(round=round_).order_by("pk").first()
    assert disputed is not None
    client.post(adjudicate, {"task": disputed.pk, "answer": "1"})
    disputed.refresh_from_db()
    assert disputed.gold_answer == {"best_positions": [1]} and disputed.adjudicated_by == admin_user
    assert client.post(adjudicate, {"task": "x", "answer": "1"}).status_code == 302  # no task named: a message
    client.post(adjudicate, {"task": disputed.pk, "answer": "7"})  # not a position: refused, unchanged
    disputed.refresh_from_db()
    assert disputed.gold_answer == {"best_positions": [1]}


def test_metrics_page_draws_rounds_and_trained_versions(admin_user: User, settings: Any, tmp_path: Path) -> None:
    from models.registry import Registry

    settings.FACTLOOP_MODEL_DIR = tmp_path / "models"
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register(name="r1", base_model="base", round=1, metrics={"chair_i": 0.3, "pope_f1": 0.8, "kl": 0.1})
    registry.register(
        name="r2", base_model="base", parent="r1", round=2, metrics={"chair_i": 0.2, "pope_f1": 0.82, "coverage": 0.87}
    )
    make_round(tasks=1)
    page = client_for(admin_user).get("/admin/annotation/round/metrics/").content.decode()
    # Hallucination and reward/KL plots; the round has no labels yet, so no agreement plot.
    assert page.count("data:image/svg+xml;base64,") == 2
    assert "<td>r2</td>" in page and "<td>0.200</td>" in page  # to 3 decimals
    # Columns with a value somewhere: CHAIR_i, POPE F1, coverage and KL; no CHAIR_s or reward.
    assert "<th>kl</th>" in page and "<th>reward</th>" not in page and "<th>chair_s</th>" not in page
    assert "<th>coverage</th>" in page and "<td>0.870</td>" in page


def test_the_train_page_queues_a_run_or_says_why_not(admin_user: User, settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    round_ = make_round(tasks=1)
    Registry(settings.FACTLOOP_MODEL_DIR).register(round_.policy_version, base_model="base")
    client = client_for(admin_user)
    page = client.post(f"/admin/annotation/round/{round_.number}/train/", {"method": "dpo"})
    assert page.status_code == 200 and "no held-out prompts to evaluate on" in page.content.decode()
    assert not TrainingRun.objects.exists() and not Job.objects.exists()
    held = Dataset.objects.create(name="mine", vocabulary="coco")
    add_prompt(make_image(), "Describe it.", split="heldout", dataset=held)
    for bad, reason in (
        ({"config": "/no/such.yaml"}, "no config file /no/such.yaml"),
        ({"overrides": "epochs"}, "KEY=VALUE"),
    ):
        page = client.post(f"/admin/annotation/round/{round_.number}/train/", {"method": "dpo", **bad})
        assert reason in page.content.decode() and not TrainingRun.objects.exists()
    done = client.post(f"/admin/annotation/round/{round_.number}/train/", {"method": "dpo", "overrides": "epochs=1\n"})
    run = TrainingRun.objects.get()
    assert run.job is not None and done["Location"] == f"/admin/annotation/job/{run.job.pk}/change/"
    assert (run.method, run.config["overrides"], run.job.queue) == ("dpo", ["epochs=1"], "train")
    assert run.config["dataset"] == "mine"  # the held-out set is fixed when the run begins
    again = client.post(f"/admin/annotation/round/{round_.number}/train/", {"method": "dpo"})
    assert "has an unfinished training run" in again.content.decode() and TrainingRun.objects.count() == 1
