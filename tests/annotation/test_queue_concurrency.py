"""32 annotators at once, over HTTP, against gunicorn: on PostgreSQL (row locks, SKIP
LOCKED) and on SQLite (the embedded default: the write lock). The same harness as
bench/annotate.py; this test asserts what must never happen, never how fast it was."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.annotate import ClientLog, LoadResult, audit, drive, losses, prepare, serve
from tests.conftest import clean_env, fresh_postgres_database

pytestmark = pytest.mark.slow

ANNOTATORS = 32
CYCLES = 60
OVERLAP = 2
# Up to 6 tasks a scene x k = 2: 120 scenes hold at most 1440 slots for 1920 attempted
# cycles, so the last tasks are fought over and every annotator ends on "no work left".
SCENES = 120


@pytest.fixture
def fresh_database(tmp_path: Path, vendor: str) -> Iterator[str]:
    if vendor == "sqlite":
        yield f"sqlite:///{tmp_path / 'concurrency.sqlite3'}"
        return
    with fresh_postgres_database("factloop_concurrency") as url:
        yield url


# "two": next, then submit; "one": each submission or skip leases the next assignment in the
# same request (?next=1), as the annotator pages do (on PostgreSQL, the production database).
@pytest.mark.parametrize(("vendor", "style"), [("postgresql", "two"), ("sqlite", "two"), ("postgresql", "one")])
def test_32_annotators_never_exceed_k_never_repeat_and_lose_nothing(
    fresh_database: str, tmp_path: Path, style: str
) -> None:
    env = clean_env()
    tokens = prepare(fresh_database, tmp_path, annotators=ANNOTATORS, scenes=SCENES, overlap=OVERLAP, base_env=env)
    with serve(fresh_database, tmp_path, workers=2, threads=16, base_env=env) as (host, port):
        first = drive(host, port, tokens, CYCLES, skip_rate=0.05, style=style)
        # A skip in the last moments gives a slot back after everyone else was told "no work
        # left" and stopped; annotators who come back later take it (none shown a task twice).
        later = drive(host, port, tokens, CYCLES, style=style)
    audited = audit(fresh_database, tmp_path, base_env=env)
    result = both(first, later)

    assert result.errors == []
    lost = losses(result, audited)
    assert lost == {"lost": 0, "duplicated": 0, "acknowledged_twice": 0, "unacknowledged_stored": 0}
    assert audited["tasks_over_k"] == 0
    assert audited["counters_off"] == 0
    assert audited["task_annotator_repeats"] == 0
    assert audited["submitted_assignments"] == len(result.acknowledged)
    for log in result.logs:
        repeats = [task for task, n in Counter(log.seen_tasks).items() if n > 1]
        assert repeats == [], "an annotator was shown the same task twice"
    # The pool ran dry under contention: every slot of every task ended with a submission,
    # skipped slots included (given back and taken by someone else).
    assert sum(len(log.skipped) for log in first.logs) > 0
    assert len(result.acknowledged) == audited["slots"]
    if style == "one":  # after the first, every label came in the previous answer
        assert sum(len(log.next_ms) for log in first.logs) == ANNOTATORS


def both(first: LoadResult, later: LoadResult) -> LoadResult:
    """Two passes of the same annotators (drive keeps their order) as one."""
    logs = []
    for a, b in zip(first.logs, later.logs, strict=True):
        log = ClientLog()
        for name, value in vars(a).items():
            setattr(log, name, value + getattr(b, name))
        logs.append(log)
    return LoadResult(first.annotators, first.seconds + later.seconds, logs)
