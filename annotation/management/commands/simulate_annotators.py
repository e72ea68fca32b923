from __future__ import annotations

import json
import logging
import random
import threading
from argparse import ArgumentParser
from dataclasses import dataclass, field
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError
from django.db import connection
from tqdm import tqdm  # type: ignore[import-untyped]

from annotation.models import Assignment
from annotation.rules.accounts import ensure_user
from annotation.web.authentication import live_token
from testbed.demo.simulation import oracle_submission
from testbed.toyworld.oracle import CORRECTION_STYLES


@dataclass
class Tally:
    submitted: int = 0
    errors: list[str] = field(default_factory=list)


class Command(BaseCommand):
    help = (
        "Simulated annotators for toy-world rounds: N annotator accounts (sim-1..sim-N, with API tokens) loop "
        "over the real HTTP API (next task, then a ranking or a correction), answering as the world's oracle "
        "would, with a share --noise of random rankings and missed hallucinations. For the demo, tests and "
        "benchmarks; the web app must be running at --url."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--n", type=int, default=8, help="annotators (default 8)")
        parser.add_argument("--noise", type=float, default=0.1, help="share of noisy answers, 0-1 (default 0.1)")
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the web app (default %(default)s)")
        parser.add_argument("--limit", type=int, help="at most this many submissions per annotator")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--correction-style",
            choices=CORRECTION_STYLES,
            default="replace",
            help="how a sentence about an absent object is corrected: rewritten into one about an object the "
            "response does not name yet, deleted where none is left (replace, the default), or always deleted",
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds per HTTP request")

    def handle(self, *args: Any, **options: Any) -> None:

        if options["n"] < 1:
            raise CommandError("--n must be at least 1")
        if not 0 <= options["noise"] <= 1:
            raise CommandError("--noise must be between 0 and 1")
        url = options["url"].rstrip("/")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress bar
        try:
            httpx.get(f"{url}/healthz", timeout=10).raise_for_status()
        except httpx.HTTPError as error:
            raise CommandError(f"the web app does not answer at {url}: {error}") from None
        tokens = []
        for i in range(1, options["n"] + 1):
            user = ensure_user(f"sim-{i}", role="annotator").user
            tokens.append(live_token(user).key)  # a live token (an expired one is replaced)
        tallies = [Tally() for _ in tokens]
        bar = tqdm(desc="labels", unit="label", disable=options["verbosity"] < 1)
        lock = threading.Lock()

        def tick() -> None:
            with lock:
                bar.update(1)

        threads = [
            threading.Thread(
                target=annotate,
                args=(url, token, options, random.Random(f"{options['seed']}-{i}"), tally, tick),
                daemon=True,
            )
            for i, (token, tally) in enumerate(zip(tokens, tallies, strict=True))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        bar.close()
        errors = [e for t in tallies for e in t.errors]
        summary = {"annotators": len(tokens), "submitted": sum(t.submitted for t in tallies), "errors": errors[:20]}
        self.stdout.write(json.dumps(summary))
        if errors:
            raise CommandError(f"{len(errors)} request(s) failed; first: {errors[0]}")


def annotate(url: str, token: str, options: dict[str, Any], rng: random.Random, tally: Tally, tick: Any) -> None:
    """One annotator: next task, the oracle's answer, submit; until no work is left."""

    headers = {"Authorization": f"Token {token}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=options["timeout"]) as client:
            while options["limit"] is None or tally.submitted < options["limit"]:
                response = client.post("/api/assignments/next/")
                if response.status_code == 204:
                    return
                if response.status_code != 200:
                    tally.errors.append(f"next: HTTP {response.status_code}: {response.text[:300]}")
                    return
                work = response.json()
                # The oracle knows the scene (the API never shows the facts to annotators).
                facts = (
                    Assignment.objects.select_related("task__prompt__image").get(pk=work["id"]).task.prompt.image.facts
                )
                shown = [(c["id"], c["text"]) for c in work["candidates"]]
                body = oracle_submission(
                    work["kind"], facts, shown, noise=options["noise"], rng=rng, style=options["correction_style"]
                )
                action = "judgement" if work["kind"] == "rank" else "correction"
                body["time_spent_ms"] = 1000
                sent = client.post(f"/api/assignments/{work['id']}/{action}/", json=body)
                if sent.status_code not in (200, 201):
                    tally.errors.append(f"{action}: HTTP {sent.status_code}: {sent.text[:300]}")
                    return
                tally.submitted += 1
                tick()
    except httpx.HTTPError as error:
        tally.errors.append(f"{type(error).__name__}: {error}")
    finally:
        connection.close()  # this thread's database connection
