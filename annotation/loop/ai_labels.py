"""AI feedback beside the annotators, and active selection, for a round whose candidates are in.

- `label_round`: the round's AI labeller (Round.ai_labeller: "policy" for the round's own
  policy, as RLAIF-V's self-feedback; or a registered version, a judge) answers a question
  per claim of every candidate. The labelling runs as `python -m rlhf.cli ai-feedback` in a
  child process against the vLLM server (the web app loads no torch); its file
  (contract/feedback.py) lands on `Candidate.ai_feedback`. Annotators see it as machine
  suggestions (the pages mark them so), the quality report shows how it agrees with them,
  and the `trl` export can carry its pairs (source "ai").
- `selected_prompts`: which prompts get human tasks when Round.selection is not "all":
  `human_prompts` of them at random, or those whose K candidates disagree most in their
  claims (contract/selection.py). Seeded by the round's number, so making the tasks again
  chooses the same prompts.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from annotation.loop.evaluation import RlhfFailed, run_rlhf, vocabulary_of
from annotation.models import Candidate, Round
from annotation.rules.errors import Invalid
from contract.feedback import read_feedback
from contract.selection import STRATEGIES, select
from models.registry import Registry, RegistryError
from models.replicas import Serving
from models.server import serve_version

POLICY = "policy"  # Round.ai_labeller: the round's own policy labels its candidates
SELECTIONS = ("all", *STRATEGIES)  # Round.selection: every prompt, or a strategy's budget


def labeller_version(round_: Round) -> str:
    return round_.policy_version if round_.ai_labeller == POLICY else round_.ai_labeller


def label_round(round_: Round, *, client: Serving, registry: Registry, urls: list[str], log: Path | None = None) -> int:
    """AI feedback on the round's candidates that have none yet; returns how many got it."""
    todo = list(
        Candidate.objects.filter(round=round_, ai_feedback__isnull=True)
        .exclude(params__has_key="gold_of")
        .select_related("prompt__image")
        .order_by("pk")
    )
    if not round_.ai_labeller or not todo:
        return 0
    version = labeller_version(round_)
    try:
        served = serve_version(client, registry, version)  # its adapter hot-loaded if needed
    except RegistryError as error:
        raise Invalid(f"the AI labeller: {error}") from None
    vocabulary = vocabulary_of([candidate.prompt for candidate in todo])
    with tempfile.TemporaryDirectory(prefix="factloop-ai-labels-") as folder:
        items, out = Path(folder) / "items.jsonl", Path(folder) / "feedback.jsonl"
        with items.open("w", encoding="utf-8") as lines:
            for candidate in todo:
                row = {"key": str(candidate.pk), "image": candidate.prompt.image.file.path, "response": candidate.text}
                lines.write(json.dumps(row) + "\n")
        args = ["ai-feedback", "--items", str(items), "--out", str(out), "--vocabulary", vocabulary]
        args += ["--server", ",".join(urls), "--served", served, "--name", f"ai:{version}"]
        if settings.FACTLOOP_AI_SPLITTER:  # a served text model splits the claims (RLAIF-V)
            args += ["--split-served", settings.FACTLOOP_AI_SPLITTER]
        try:
            run_rlhf(args, log or Path(settings.VAR_DIR) / "logs" / f"ai-labels-round-{round_.number}.log")
        except RlhfFailed as error:
            raise Invalid(f"the AI labeller failed: {error}") from None
        found = {item.key: item.as_dict() for item in read_feedback(out)}
    with transaction.atomic():
        for candidate in todo:
            candidate.ai_feedback = found.get(str(candidate.pk))
        Candidate.objects.bulk_update(todo, ["ai_feedback"])
    return sum(candidate.ai_feedback is not None for candidate in todo)


def claim_keys(feedback: dict[str, Any] | None) -> set[tuple[str, str, str]]:
    """The claims a stored feedback found, as the keys selection compares."""
    return {(c["kind"], c["subject"], c["value"]) for c in (feedback or {}).get("claims", [])}


def selected_prompts(round_: Round) -> set[int] | None:
    """The prompt ids that get human tasks, or None for all of them."""
    if round_.selection == "all" or round_.human_prompts is None:
        return None
    candidates = (
        Candidate.objects.filter(round=round_).exclude(params__has_key="gold_of").order_by("prompt_id", "index")
    )
    samples: dict[int, list[set[tuple[str, str, str]]]] = defaultdict(list)
    for prompt_id, feedback in candidates.values_list("prompt_id", "ai_feedback"):
        samples[prompt_id].append(claim_keys(feedback))
    if round_.selection == "disagreement" and not any(f for group in samples.values() for f in group):
        raise Invalid(f"{round_}: selection by disagreement reads the AI labeller's claims; the round has none")
    return set(
        select(dict(sorted(samples.items())), round_.human_prompts, strategy=round_.selection, seed=round_.number)
    )


def check_settings(ai_labeller: str, selection: str, human_prompts: int | None) -> None:
    """A round's AI and selection settings make sense together (raises Invalid)."""
    if selection not in SELECTIONS:
        raise Invalid(f"selection must be {', '.join(SELECTIONS)}, not {selection!r}")
    if selection != "all" and (human_prompts is None or human_prompts < 1):
        raise Invalid(f"selection {selection} needs a human budget (human_prompts of at least 1)")
    if selection == "disagreement" and not ai_labeller:
        raise Invalid("selection by disagreement needs an AI labeller (its claims are what disagree)")
    if ai_labeller and ai_labeller != POLICY:
        try:
            Registry(settings.FACTLOOP_MODEL_DIR).get(ai_labeller)
        except RegistryError:
            raise Invalid(f"the AI labeller {ai_labeller!r} is neither 'policy' nor a registered version") from None
