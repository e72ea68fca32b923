"""A round's candidates from a real vLLM server through the `generate_candidates` task:
K per prompt, only what is missing, adapters loaded on demand, failures recorded whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from annotation.administration.dashboard import candidate_repeats
from annotation.labeling.rounds import add_candidates, distinct_key
from annotation.models import Candidate, Job, Round, RoundPrompt, Task
from annotation.worker.tasks import generate_candidates
from models.registry import Registry
from tests.conftest import free_port
from tests.factories import make_generation_round, make_job

pytestmark = [pytest.mark.slow, pytest.mark.serving, pytest.mark.django_db]


@pytest.fixture
def registry(settings: Any, tmp_path: Path, base_policy: Path, adapters: dict[str, Path]) -> Registry:
    settings.FACTLOOP_MODEL_DIR = str(tmp_path / "models")
    registry = Registry(settings.FACTLOOP_MODEL_DIR)
    registry.register("tiny-base", base_model=str(base_policy))
    registry.register("round-1", base_model=str(base_policy), adapter_dir=adapters["a"], parent="tiny-base", round=1)
    return registry


def run_job(round_: Round) -> Job:
    job = make_job(kind=Job.Kind.GENERATE, queue="generate", params={"round_id": round_.pk})
    generate_candidates.apply(args=(job.pk,))
    job.refresh_from_db()
    return job


def test_a_round_gets_k_candidates_per_prompt_and_a_rerun_adds_nothing(
    settings: Any, vllm_server: Any, registry: Registry
) -> None:
    settings.FACTLOOP_VLLM_URL = vllm_server.url
    round_ = make_generation_round("tiny-base")
    first_prompt = round_.round_prompts.order_by("pk").first()
    assert first_prompt is not None
    add_candidates(round_, first_prompt.prompt, ["an answer from before"])  # one of three is there

    job = run_job(round_)
    assert job.status == Job.Status.SUCCEEDED, job.error
    assert (job.progress_done, job.progress_total) == (4, 4)
    assert job.result["candidates_created"] == 4 * 3 - 1 and job.result["failed"] == 0
    for round_prompt in round_.round_prompts.all():
        assert round_prompt.status == RoundPrompt.Status.DONE
        indices = list(
            Candidate.objects.filter(round=round_, prompt=round_prompt.prompt).values_list("index", flat=True)
        )
        assert sorted(indices) == [0, 1, 2]
    generated = Candidate.objects.filter(round=round_).exclude(params={})
    texts = list(generated.values_list("text", flat=True))
    assert len(texts) == 11 and all(texts) and len(set(texts)) > 4  # sampled at temperature 1
    assert {params["model"] for params in generated.values_list("params", flat=True)} == {"base"}

    again = run_job(round_)
    assert again.status == Job.Status.SUCCEEDED and again.result["candidates_created"] == 0
    assert Candidate.objects.filter(round=round_).count() == 12


def test_an_adapter_version_is_hot_loaded_and_used(settings: Any, vllm_server: Any, registry: Registry) -> None:
    from models.serving import ServingClient

    settings.FACTLOOP_VLLM_URL = vllm_server.url
    with ServingClient(vllm_server.url) as client:
        if "round-1" in client.models():
            client.unload_adapter("round-1")
    round_ = make_generation_round("round-1", prompts=2, k=2)
    job = run_job(round_)
    assert job.status == Job.Status.SUCCEEDED, job.error
    with ServingClient(vllm_server.url) as client:
        assert "round-1" in client.models()
    params = Candidate.objects.filter(round=round_).values_list("params", flat=True)
    assert {p["model"] for p in params} == {"round-1"}


def test_with_the_server_down_prompts_fail_whole_and_a_rerun_completes(
    settings: Any, vllm_server: Any, registry: Registry
) -> None:
    round_ = make_generation_round("tiny-base", prompts=3, k=2)
    settings.FACTLOOP_VLLM_URL = f"http://127.0.0.1:{free_port()}"  # nothing listens: the server is down
    failed = run_job(round_)
    assert failed.status == Job.Status.FAILED and "failed after 4 attempts" in failed.error
    assert set(round_.round_prompts.values_list("status", flat=True)) == {RoundPrompt.Status.FAILED}
    assert all("ConnectError" in e or "Connect" in e for e in round_.round_prompts.values_list("error", flat=True))
    assert not Candidate.objects.filter(round=round_).exists()

    settings.FACTLOOP_VLLM_URL = vllm_server.url  # back up
    job = run_job(round_)
    assert job.status == Job.Status.SUCCEEDED
    assert set(round_.round_prompts.values_list("status", flat=True)) == {RoundPrompt.Status.DONE}
    assert Candidate.objects.filter(round=round_).count() == 3 * 2


def test_an_unknown_policy_version_fails_the_job_with_a_reason(settings: Any, registry: Registry) -> None:
    round_ = make_generation_round("no-such-version", prompts=1)
    job = run_job(round_)
    assert job.status == Job.Status.FAILED and "no-such-version" in job.error
    assert not Candidate.objects.filter(round=round_).exists()


def test_a_frozen_round_takes_no_generation(registry: Registry) -> None:
    from annotation.loop.generation import queue_generation

    round_ = make_generation_round("tiny-base", prompts=1)
    Round.objects.filter(pk=round_.pk).update(status=Round.Status.FROZEN)
    round_.refresh_from_db()
    with pytest.raises(ValidationError, match="frozen"):
        queue_generation(round_)


def test_the_policy_labels_its_own_candidates_and_humans_get_the_most_disagreeing_prompts(
    settings: Any, vllm_server: Any, registry: Registry
) -> None:
    """Self-feedback (RLAIF-V) as a round opens: the served policy answers a question per
    claim of every candidate (rlhf.cli ai-feedback in a child process), the feedback lands on
    the candidates, and with a human budget of 2 prompts only the 2 whose samples disagree
    most get tasks; the round opens."""
    from annotation.loop.ai_labels import claim_keys
    from annotation.models import Image, Task
    from contract.feedback import Feedback
    from contract.selection import disagreement

    settings.FACTLOOP_VLLM_URL = vllm_server.url
    round_ = make_generation_round("tiny-base", prompts=5, k=3)
    for image in Image.objects.filter(prompts__rounds=round_):
        image.facts = {**image.facts, "vocabulary": "toyworld"}
        image.save()
    Round.objects.filter(pk=round_.pk).update(
        ai_labeller="policy",
        selection="disagreement",
        human_prompts=2,
        task_kinds=["correct"],
        open_when_ready=True,
    )
    job = run_job(round_)
    assert job.status == Job.Status.SUCCEEDED, job.error
    candidates = list(Candidate.objects.filter(round=round_))
    assert len(candidates) == 15 and job.result["ai_labelled"] == 15
    claims = 0
    for candidate in candidates:
        assert candidate.ai_feedback is not None
        feedback = Feedback.from_dict(candidate.ai_feedback)
        assert feedback.labeller == "ai:tiny-base"
        for claim in feedback.claims:
            assert claim.question and claim.answer  # asked of the served policy, answered
            assert candidate.text[claim.start : claim.end]
        claims += len(feedback.claims)
    assert claims >= 15  # descriptions of toy scenes name objects
    tasks = Task.objects.filter(round=round_)
    chosen = set(tasks.values_list("prompt_id", flat=True))
    assert len(chosen) == 2 and tasks.count() == 2 * 3  # a correct task per candidate of the chosen prompts
    spread = {
        prompt: disagreement([claim_keys(c.ai_feedback) for c in candidates if c.prompt_id == prompt])
        for prompt in {c.prompt_id for c in candidates}
    }
    assert min(spread[p] for p in chosen) >= max(spread[p] for p in spread if p not in chosen)
    round_.refresh_from_db()
    assert round_.status == Round.Status.OPEN


def test_generation_draws_a_repeated_candidate_again_and_ranks_only_distinct_ones(
    settings: Any, vllm_server: Any, registry: Registry
) -> None:
    """The tiny model's short answers mostly differ in one word ("small" or "large"), so two
    candidates often repeat each other. With no second tries (the control) 9 of 16 prompts
    keep two identical candidates; with FACTLOOP_DISTINCT_TRIES the same seeded requests and
    new draws leave fewer (none, measured), the draws are counted, and no ranking task holds
    two identical answers (those left became correction tasks)."""
    settings.FACTLOOP_VLLM_URL = vllm_server.url
    sampling = {"temperature": 0.3, "seed": 15845, "max_tokens": 4}
    found = {}
    for tries in (0, 3):
        settings.FACTLOOP_DISTINCT_TRIES = tries
        round_ = make_generation_round("tiny-base", prompts=16, k=2, sampling=sampling, prefix=f"distinct-{tries}")
        Round.objects.filter(pk=round_.pk).update(task_kinds=["rank"])
        job = run_job(round_)
        assert job.status == Job.Status.SUCCEEDED, job.error
        round_.refresh_from_db()
        found[tries] = candidate_repeats(round_) | {"redrawn": job.result["redrawn"]}
        for task in Task.objects.filter(round=round_, kind=Task.Kind.RANK):
            keys = [distinct_key(c.text) for c in task.candidates.all()]
            assert len(set(keys)) == len(keys), keys
        assert Task.objects.filter(round=round_, kind=Task.Kind.CORRECT).count() == found[tries]["rankings_converted"]
    control, treated = found[0], found[3]
    assert control["repeated"] >= 2 and control["redraws"] == control["redrawn"] == 0, control
    assert treated["redrawn"] > 0 and treated["redraws"] == treated["redrawn"], treated
    assert treated["repeated"] < control["repeated"], (control, treated)
    assert treated["rankings_converted"] == treated["repeated"]
    drawn = Candidate.objects.filter(round__number=max(Round.objects.values_list("number", flat=True)))
    assert sum(int(c.params.get("redraws", 0)) for c in drawn) == treated["redrawn"]
