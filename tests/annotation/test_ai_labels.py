"""AI feedback beside the annotators in the web app: what a correction records of the
machine's suggestions, the quality report's agreement, the AI pairs of an export, the
round settings that are refused, and selection without the server (random, disagreement)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from annotation.data.exporters import Selection, check_format, export, select_pairs
from annotation.data.images import add_prompt
from annotation.labeling import quality, queue
from annotation.labeling.rounds import add_candidates, create_round
from annotation.labeling.submissions import submit_correction, submit_judgement
from annotation.loop.ai_labels import selected_prompts
from annotation.loop.generation import make_round_tasks, start_round
from annotation.models import Candidate, Correction, Round, Task
from annotation.rules.errors import Invalid
from tests.annotation.test_annotation_api import client_for, lease, post
from tests.factories import machine_feedback, make_image, make_round

pytestmark = pytest.mark.django_db

TEXT = "A red ball is at the top. A moon is in the center."


def test_a_correction_records_the_suggestions_it_accepted_and_rejected(annotator: User) -> None:
    round_ = make_round(tasks=2, kind=Task.Kind.CORRECT, texts=[TEXT])
    for candidate in round_.candidates.all():
        candidate.ai_feedback = machine_feedback(TEXT, "A moon is in the center.")
        candidate.save()
    client = client_for(annotator)
    work = lease(client)
    [suggestion] = work["candidates"][0]["suggestions"]
    assert (suggestion["start"], suggestion["end"], suggestion["fix"]) == (26, 50, [26, 50, ""])
    assert work["candidates"][0]["ai_labeller"] == "ai:judge" and work["candidates"][0]["ai_score"] == -1
    url = f"/api/assignments/{work['id']}/correction/"
    bad = post(client, url, {"corrected": "A red ball is at the top.", "suggestions": {"accepted": [3]}})
    assert bad.status_code == 400 and "out of range" in bad.json()["detail"]
    both = post(client, url, {"corrected": "A red ball.", "suggestions": {"accepted": [0], "rejected": [0]}})
    assert both.status_code == 400 and "both" in both.json()["detail"]
    other = post(client, url, {"corrected": "A red ball.", "suggestions": {"maybe": [0]}})
    assert other.status_code == 400
    assert not Correction.objects.exists()  # nothing half-written
    done = post(client, url, {"corrected": "A red ball is at the top.", "suggestions": {"accepted": [0]}})
    assert done.status_code == 201, done.json()
    assert done.json()["suggestions"] == {"accepted": [0], "rejected": []}
    assert Correction.objects.get().suggestions == {"accepted": [0], "rejected": []}


def test_the_quality_report_measures_the_labeller_against_the_people(
    annotator: User, second_annotator: User, admin_user: User
) -> None:
    corrections = make_round(tasks=2, kind=Task.Kind.CORRECT, texts=[TEXT])
    for candidate in corrections.candidates.all():
        candidate.ai_feedback = machine_feedback(TEXT, "red", fix="blue")
        candidate.save()
    for person, fixed in ((annotator, TEXT.replace("red", "blue")), (second_annotator, TEXT.replace("moon", "star"))):
        lease_ = queue.next_assignment_for(person)
        assert lease_ is not None
        submit_correction(person, lease_.pk, corrected=fixed, suggestions={"accepted": [0]} if "blue" in fixed else {})
    report = quality.round_quality([corrections.number])
    assert report.ai is not None
    # Its one doubt ("red") matched the first person's change, not the second's.
    assert (report.ai.corrections, report.ai.precision, report.ai.recall) == (2, 0.5, 0.5)
    assert (report.ai.accepted, report.ai.rejected, report.ai.rankings) == (1, 0, 0)
    page = client_for(admin_user).get(f"/admin/annotation/round/{corrections.number}/quality/").content.decode()
    assert "The AI labeller against the annotators" in page and "<td>50%</td><td>50%</td><td>1</td>" in page

    rankings = make_round(tasks=2, texts=["A ball.", "A ball and a moon."])
    for candidate in rankings.candidates.filter(text="A ball and a moon."):
        candidate.ai_feedback = machine_feedback(candidate.text, "moon")
        candidate.save()
    for candidate in rankings.candidates.filter(text="A ball."):
        candidate.ai_feedback = machine_feedback(candidate.text, "ball", fix=None, labeller="ai:judge")
        candidate.ai_feedback["claims"] = []  # no doubt: score 0
        candidate.save()
    for person in (annotator, second_annotator):
        lease_ = queue.next_assignment_for(person)
        assert lease_ is not None
        ids = list(lease_.task.slots.order_by("position").values_list("candidate_id", flat=True))
        first = ids if person == annotator else ids[::-1]  # the first agrees with the labeller
        submit_judgement(person, lease_.pk, ranking=first)
    ai = quality.round_quality([rankings.number]).ai
    assert ai is not None and (ai.rankings, ai.ranking_agreement) == (2, 0.5)
    assert quality.round_quality([make_round(tasks=1).number]).ai is None  # no AI feedback: no section


def test_an_export_carries_the_labellers_pairs_only_when_asked(tmp_path: Path) -> None:
    from datasets import load_from_disk  # type: ignore[import-untyped]

    round_ = create_round(policy_version="test-policy")
    image = make_image()
    prompt = add_prompt(image, "Describe the image.")
    texts = ["A ball.", "A ball and a moon.", "A ball, a moon and a kite."]
    for text, candidate in zip(texts, add_candidates(round_, prompt, texts), strict=True):
        doubts = [w for w in ("moon", "kite") if w in text]
        feedback = machine_feedback(text, "ball", labeller="ai:round-1")
        feedback["claims"] = [machine_feedback(text, w, labeller="ai:round-1")["claims"][0] for w in doubts]
        for i, claim in enumerate(feedback["claims"]):
            claim["value"] = str(i)  # distinct claims
        candidate.ai_feedback = feedback
        candidate.save()
    with pytest.raises(ValueError, match="trl format only"):
        check_format("llava-rlhf", Selection((round_.number,), ai_pairs=True))
    counts = export("trl", Selection((round_.number,), ai_pairs=True), tmp_path / "with")
    rows = load_from_disk(str(tmp_path / "with"))
    # Scores 0, -1, -2: one pair (gap 2, each candidate once), made by the labeller.
    assert counts == {"pairs": 1} and rows["source"] == ["ai"] and rows["annotator"] == ["ai:round-1"]
    assert rows[0]["chosen"][0]["content"][0]["text"] == "A ball."
    assert rows[0]["rejected"][0]["content"][0]["text"] == "A ball, a moon and a kite."
    assert len(rows[0]["images"]) == 1
    manifest = json.loads((tmp_path / "with" / "manifest.json").read_text())
    assert manifest["filters"]["ai_pairs"] is True
    assert list(select_pairs(Selection((round_.number,)))) == []  # not asked: people's labels only


def test_round_settings_that_cannot_work_are_refused(settings: Any, tmp_path: Path) -> None:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    prompt = add_prompt(make_image(), "Describe.")
    base: dict[str, Any] = {"policy_version": "p", "prompts": [prompt], "task_kinds": ["correct"]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"selection": "disagreement", "human_prompts": 5}, "needs an AI labeller"),
        ({"selection": "random"}, "human budget"),
        ({"selection": "entropy", "human_prompts": 1}, "selection must be"),
        ({"ai_labeller": "no-such-judge"}, "neither 'policy' nor a registered version"),
    ]
    for extra, message in cases:
        with pytest.raises(ValidationError, match=message):
            start_round(**base, **extra)
    assert not Round.objects.exists()


def _round_with_samples(samples: dict[str, list[str]], *, selection: str, budget: int) -> Round:
    round_ = create_round(policy_version="test-policy")
    Round.objects.filter(pk=round_.pk).update(
        task_kinds=["correct"], selection=selection, human_prompts=budget, candidates_per_prompt=2
    )
    round_.refresh_from_db()
    image = make_image()
    for name, texts in samples.items():
        for text, candidate in zip(texts, add_candidates(round_, add_prompt(image, name), texts), strict=True):
            feedback = machine_feedback(text, "A")
            feedback["claims"][0]["value"] = text  # each text its own claim
            candidate.ai_feedback = feedback
            candidate.save()
    return round_


def test_only_the_selected_prompts_get_human_tasks() -> None:
    round_ = _round_with_samples(
        {"same": ["A x.", "A x."], "other": ["A y.", "A y."], "split": ["A x.", "A z."]},
        selection="disagreement",
        budget=1,
    )
    assert make_round_tasks(round_) == 2
    assert set(Task.objects.filter(round=round_).values_list("prompt__text", flat=True)) == {"split"}
    assert make_round_tasks(round_) == 0  # again: the same choice, nothing new

    random_round = _round_with_samples({"a": ["A x.", "A y."], "b": ["A x.", "A z."]}, selection="random", budget=1)
    chosen = selected_prompts(random_round)
    assert chosen is not None and len(chosen) == 1 and selected_prompts(random_round) == chosen
    Candidate.objects.filter(round=random_round).update(ai_feedback=None)
    assert selected_prompts(random_round) == chosen  # random needs no labeller

    Candidate.objects.filter(round=round_).update(ai_feedback=None)
    with pytest.raises(Invalid, match="reads the AI labeller's claims"):
        selected_prompts(round_)
