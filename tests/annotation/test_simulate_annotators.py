"""`manage.py simulate_annotators`: oracle annotators over the real HTTP API."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from annotation.models import Candidate, Correction, Judgement, Task
from testbed.demo.simulation import oracle_submission
from testbed.demo.toy_rounds import build_synthetic_round
from testbed.toyworld import Scene
from testbed.toyworld.oracle import check, correct

pytestmark = pytest.mark.django_db(transaction=True)


def test_simulated_annotators_label_every_task_as_the_oracle_would(
    live_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    built = build_synthetic_round(scenes=6, kinds=("rank", "correct"), overlap=2, candidates=3, error_rate=0.6)
    call_command("simulate_annotators", "--n", "3", "--noise", "0", "--url", live_server.url)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"annotators": 3, "submitted": built.tasks * 2, "errors": []}
    for task in Task.objects.filter(round=built.round):
        labels = Judgement.objects.filter(assignment__task=task) if task.kind == "rank" else None
        scene = Scene.from_facts(task.prompt.image.facts)
        if task.kind == "rank":
            assert labels is not None and labels.count() == 2
            for judgement in labels:
                texts = dict(Candidate.objects.filter(pk__in=judgement.ranking).values_list("pk", "text"))
                counts = [check(scene, texts[cid]).hallucinations for cid in judgement.ranking]
                assert counts == sorted(counts)  # fewer hallucinations first
        else:
            corrections = Correction.objects.filter(assignment__task=task)
            assert corrections.count() == 2
            original = task.slots.get().candidate.text
            expected = correct(scene, original)
            for fix in corrections:
                assert (fix.corrected or original) == (expected if expected != original else original)


def test_noise_makes_some_answers_wrong() -> None:
    import random

    from testbed.toyworld import sample_scenes

    scene = sample_scenes(3, 1)[0]
    facts = scene.facts()
    good, bad = facts["captions"][0], facts["captions"][0] + " A large red kite is at the bottom right."
    clean = oracle_submission("rank", facts, [(1, bad), (2, good)], noise=0.0, rng=random.Random(0))
    assert clean["ranking"] == [2, 1] and clean["hallucinated"] == [1] and clean["tiers"] == [[2], [1]]
    rng = random.Random(0)
    noisy = [oracle_submission("rank", facts, [(1, bad), (2, good)], noise=1.0, rng=rng)["ranking"] for _ in range(20)]
    assert [1, 2] in noisy  # random rankings


def test_the_command_refuses_bad_input() -> None:
    with pytest.raises(CommandError, match="does not answer"):
        call_command("simulate_annotators", "--url", "http://127.0.0.1:9")
    with pytest.raises(CommandError, match="--noise"):
        call_command("simulate_annotators", "--noise", "2")
