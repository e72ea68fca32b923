"""Simulated annotators for toy-world rounds: the oracle's answers, with optional noise.

`oracle_submission` turns a task (its kind, the scene's facts, the candidates shown) into
what an annotator following the protocol would submit: a LLaVA-RLHF ranking (fewer
hallucinations first, then more correct claims; docs/methods.md 1a) or an RLHF-V correction of
the hallucinated segments (1b), rewriting a sentence about an absent object into one about an
object the response does not name yet (`style` "replace", the default) or deleting it
("delete"; testbed/toyworld/oracle.py's `correct`). With `noise`, a share of rankings are
random and a share of hallucinated segments are left uncorrected. `label_round` answers a round's tasks through
the services (tests); `manage.py simulate_annotators` drives the HTTP API with it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import groupby
from typing import Any

from annotation.labeling import queue
from annotation.labeling.submissions import submit_correction, submit_judgement
from testbed.toyworld import Scene
from testbed.toyworld.oracle import CorrectionStyle, check, correct


def oracle_submission(
    kind: str,
    facts: dict[str, Any],
    candidates: Sequence[tuple[int, str]],
    *,
    noise: float,
    rng: random.Random,
    style: CorrectionStyle = "replace",
) -> dict[str, Any]:
    """The body of a judgement (kind "rank") or correction (kind "correct") submission;
    `candidates` are (id, text) in the order shown."""
    scene = Scene.from_facts(facts)
    if kind == "rank":
        reports = {cid: check(scene, text) for cid, text in candidates}
        ids = [cid for cid, _ in candidates]
        if noise and rng.random() < noise:
            rng.shuffle(ids)
            tiers = [[cid] for cid in ids]
        else:
            # Q1 groups by hallucination count; Q2 orders a group by correct claims.
            ids.sort(key=lambda cid: (reports[cid].hallucinations, -reports[cid].correct_claims, rng.random()))
            tiers = [list(group) for _, group in groupby(ids, key=lambda cid: reports[cid].hallucinations)]
        return {
            "ranking": ids,
            "tiers": tiers,
            "hallucinated": [cid for cid in ids if reports[cid].hallucinations > 0],
        }
    (_, original), *_ = candidates
    fixed = correct(scene, original, noise=noise, rng=rng, style=style)
    if fixed == original.strip() or not fixed:
        return {"no_hallucination": True}
    return {"corrected": fixed}


def label_round(
    annotator: Any,
    *,
    noise: float = 0.0,
    seed: int = 0,
    limit: int | None = None,
    style: CorrectionStyle = "replace",
) -> int:
    """Answer the tasks the queue hands `annotator` with the oracle, through the services;
    returns how many were submitted."""

    rng = random.Random(seed)
    done = 0
    while limit is None or done < limit:
        lease = queue.next_assignment_for(annotator)
        if lease is None:
            return done
        task = lease.task
        slots = task.slots.select_related("candidate").order_by("position")
        shown = [(slot.candidate_id, slot.candidate.text) for slot in slots]
        body = oracle_submission(task.kind, task.prompt.image.facts, shown, noise=noise, rng=rng, style=style)
        if task.kind == "rank":
            submit_judgement(annotator, lease.pk, **body)
        else:
            submit_correction(
                annotator,
                lease.pk,
                corrected=body.get("corrected"),
                no_hallucination=body.get("no_hallucination", False),
            )
        done += 1
    return done
