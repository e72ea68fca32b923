"""What the database does for the two queries that grow with history, read from PostgreSQL's
own plans: a claim reads no task of a frozen round, and choosing a new round's prompts is an
anti-join, not a subplan run once per prompt."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import QuerySet

from annotation.data.images import add_prompt
from annotation.labeling import queue
from annotation.labeling.rounds import add_candidates, create_round, freeze_round
from annotation.models import Candidate, Prompt, RoundPrompt, Task
from annotation.rules import selectors
from tests.factories import make_image, make_round

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _postgres_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("plans are PostgreSQL's")


def plan(query: QuerySet[Any]) -> dict[str, Any]:
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
        cursor.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", params)
        (raw,) = cursor.fetchone()
    found: dict[str, Any] = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    return found


def rows_read(node: dict[str, Any]) -> float:
    """Every row a node produced or threw away, over all its loops, and its children's."""
    own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1)
    own += sum(node.get(key, 0) for key in node if key.startswith("Rows Removed by"))
    return own + sum(rows_read(child) for child in node.get("Plans", []))


def leftovers(count: int) -> None:
    """A frozen round whose `count` tasks nobody finished (a round frozen early)."""
    round_ = create_round(policy_version="old")
    prompt = add_prompt(make_image((9, 9, 9)), "Describe the image (old).")
    add_candidates(round_, prompt, ["a", "b"])
    Task.objects.bulk_create(Task(round=round_, prompt=prompt, kind=Task.Kind.RANK) for _ in range(count))
    freeze_round(round_)


def test_a_claim_reads_no_task_of_a_frozen_round(annotator: User) -> None:
    leftovers(5000)  # older than the open round's tasks: an id-ordered walk meets them first
    make_round(tasks=3)
    claim = queue._free_task_ids(annotator).values_list("pk", flat=True)[:1]
    with_leftovers = rows_read(plan(claim))
    Task.objects.filter(round__status="frozen").delete()
    without = rows_read(plan(claim))
    assert with_leftovers <= without + 5, (with_leftovers, without)
    assert queue.next_assignment_for(annotator) is not None


def test_a_new_round_s_prompts_are_an_anti_join() -> None:
    image = make_image()
    prompts = Prompt.objects.bulk_create(Prompt(image=image, text=f"p{i}") for i in range(20_000))
    round_ = create_round()
    RoundPrompt.objects.bulk_create(RoundPrompt(round=round_, prompt=p) for p in prompts[::2])
    Candidate.objects.bulk_create(Candidate(round=round_, prompt=p, index=0, text="x") for p in prompts[1::4])
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL work_mem = '64kB'")  # the subquery outgrows it, as at 150,000 prompts
    query = selectors.prompts_query("train", only_new=True)
    text = json.dumps(plan(query))
    assert "Anti" in text and "SubPlan" not in text, text[:2000]
    assert len(selectors.prompts_for_a_round("train", only_new=True, limit=None)) == 5_000
