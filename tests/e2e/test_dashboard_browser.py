"""The loop dashboard in a real browser: an admin lands on it, follows its next action to
start a round, sees the round's labelling progress move as an annotator works, and follows
"Train it" to queue the round's training as a job."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from playwright.sync_api import expect

from annotation.data.images import add_prompt
from annotation.labeling import queue
from annotation.labeling.submissions import submit_judgement
from annotation.models import Dataset, Job, TrainingRun
from models.registry import Registry
from tests.e2e.test_login_browser import log_in
from tests.factories import make_image, make_round

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_the_dashboard_follows_a_round(
    page: Any, live_server: Any, admin_user: User, annotator: User, settings: Any, tmp_path: Any
) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    base = live_server.url
    log_in(page, base, admin_user.username)
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    page.goto(f"{base}/admin/")
    expect(page.get_by_test_id("next-action")).to_contain_text("Start the first round.")
    page.get_by_test_id("next-action-link").click()
    page.wait_for_url(f"{base}/admin/annotation/round/start/")
    expect(page.locator("h1")).to_contain_text("Start a round")

    round_ = make_round(tasks=2)  # a round whose candidates are in (as generation leaves it)
    Registry(settings.FACTLOOP_MODEL_DIR).register(round_.policy_version, base_model="base")
    held = Dataset.objects.create(name="checks", vocabulary="coco")  # what training evaluates on
    add_prompt(make_image(), "Describe it.", split="heldout", dataset=held)
    page.goto(f"{base}/admin/")
    expect(page.get_by_test_id("next-action")).to_contain_text(f"{round_} is open for annotation")
    expect(page.get_by_test_id("labelled")).to_contain_text("0 / 2")
    # make_round's two prompts have different answers: no repeats, nothing converted.
    expect(page.get_by_test_id("identical")).to_contain_text("0 of 2 prompts (0%) after 0 drawn again")
    for _ in range(2):
        lease = queue.next_assignment_for(annotator)
        assert lease is not None
        submit_judgement(annotator, lease.pk, ranking=[s.candidate_id for s in lease.task.slots.all()])
    page.reload()
    expect(page.get_by_test_id("labelled")).to_contain_text("2 / 2")
    expect(page.get_by_test_id("labelled")).to_contain_text("100%")
    expect(page.get_by_test_id("active")).to_have_text("1")
    expect(page.get_by_test_id("next-action")).to_contain_text("fully labelled: train it")
    page.get_by_test_id("next-action-link").click()
    page.wait_for_url(f"{base}/admin/annotation/round/{round_.number}/train/")
    page.get_by_label("Method").select_option("dpo")
    page.get_by_label("Overrides").fill("epochs=1\nbeta=0.2")
    page.locator("input[type=submit]").click()
    page.wait_for_url(lambda url: "/admin/annotation/job/" in url)
    run = TrainingRun.objects.get(round=round_)
    assert run.job is not None
    assert (run.method, run.config["overrides"], run.job.kind) == ("dpo", ["epochs=1", "beta=0.2"], Job.Kind.TRAIN)
    page.goto(f"{base}/admin/")
    expect(page.get_by_test_id("next-action")).to_contain_text(f"{round_} is being trained")
    expect(page.get_by_test_id("dashboard")).to_contain_text(f"#{run.job.pk}")


def test_the_rounds_and_metrics_tables_fit_a_1400_px_window(
    page: Any, live_server: Any, admin_user: User, settings: Any, tmp_path: Any
) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("tiny-base", base_model="base")
    registry.record_evaluation("tiny-base", {"metrics": {"chair_i": 0.0861244019, "chair_s": 0.3, "pope_f1": 1.0}})
    round_ = make_round(tasks=3)
    round_.policy_version = "round-12-ddpo-run-345"
    round_.save(update_fields=["policy_version"])
    page.set_viewport_size({"width": 1400, "height": 900})
    log_in(page, live_server.url, admin_user.username)
    page.wait_for_url(lambda url: "/accounts/login/" not in url)
    for path, table in (("/admin/annotation/round/", "#result_list"), ("/admin/annotation/round/metrics/", "table")):
        page.goto(f"{live_server.url}{path}")
        right = page.locator(table).first.evaluate("element => element.getBoundingClientRect().right")
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert right <= 1400 and overflow <= 0, (path, right, overflow)
