"""`manage.py run_rounds --rounds N --labels-per-round M`: the loop, N rounds in a row.

Each round: wait until the newest round is open (the worker generates its candidates, and its
AI labeller labels them, as the round opening does), collect M human labels (simulated
annotators over the HTTP API with `--simulate K`, or real ones: it waits until they have
given M), then `train_round` (inline): train, evaluate, gate, deploy, and open the next round
on the new policy. The per-round curves are the admin's "Metrics per round" page.
"""

from __future__ import annotations

import json
import math
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Sum
from tqdm import tqdm  # type: ignore[import-untyped]

from annotation.loop.training import label_counts
from annotation.models import Round, Task, TrainingRun
from contract.methods import METHODS
from testbed.demo.steps import wait_open
from testbed.toyworld.oracle import CORRECTION_STYLES


def labels_in(round_: Round) -> int:
    return sum(label_counts(round_).values())


def capacity_of(round_: Round) -> int:
    """How many labels the round's tasks can take (each task its overlap)."""
    return int(Task.objects.filter(round=round_).aggregate(total=Sum("overlap"))["total"] or 0)


class Command(BaseCommand):
    help = (
        "Run N rounds of the loop: wait for the newest round to open, collect M labels a round "
        "(simulated annotators with --simulate K, or real ones), train_round it, and go on with the round "
        "it opens. Needs the worker (and vLLM) running, as train_round and generation do."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--rounds", type=int, required=True, help="rounds to run, N")
        parser.add_argument(
            "--labels-per-round", type=int, help="human labels to collect a round, M (default: every task's)"
        )
        parser.add_argument(
            "--simulate", type=int, metavar="K", help="K simulated annotators label over the API (the toy world)"
        )
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="the web app, for --simulate")
        parser.add_argument("--noise", type=float, default=0.1, help="--simulate: the annotators' noise (0-1)")
        parser.add_argument(
            "--correction-style",
            choices=CORRECTION_STYLES,
            default="replace",
            help="--simulate: rewrite a sentence about an absent object into one about an unnamed object (replace) "
            "or delete it (delete)",
        )
        parser.add_argument("--method", choices=METHODS, default="ddpo", help="train_round's method")
        parser.add_argument("--config", help="train_round's settings file")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a trainer setting")
        parser.add_argument("--open-timeout", type=float, default=1800.0, help="seconds to wait for a round to open")
        parser.add_argument(
            "--label-timeout", type=float, default=7 * 24 * 3600.0, help="seconds to wait for real annotators"
        )
        parser.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the labels")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rounds"] < 1:
            raise CommandError("--rounds must be at least 1")
        wanted = options["labels_per_round"]
        if wanted is not None and wanted < 1:
            raise CommandError("--labels-per-round must be at least 1")
        if options["simulate"] is not None and options["simulate"] < 1:
            raise CommandError("--simulate needs at least 1 annotator")
        summary = []
        for _ in range(options["rounds"]):
            round_ = Round.objects.order_by("-number").first()
            if round_ is None:
                raise CommandError("no round to run: start one (admin: Start a round, or the demo)")
            if round_.status == Round.Status.FROZEN:
                raise CommandError(f"{round_} is frozen and opened no next round; train_round --resume finishes it")
            try:
                round_ = wait_open(round_, options["open_timeout"])
            except TimeoutError as error:
                raise CommandError(str(error)) from None
            target = min(wanted or capacity_of(round_), capacity_of(round_))
            self._collect(round_, target, options)
            call_command(
                "train_round",
                round=round_.number,
                method=options["method"],
                config=options["config"],
                set=list(options["set"]),
                inline=True,
                stdout=self.stdout,
                verbosity=options["verbosity"],
            )
            run = TrainingRun.objects.filter(round=round_).order_by("-created_at").first()
            assert run is not None
            metrics = (run.steps.get("evaluate", {}).get("detail") or {}).get("new") or {}
            summary.append(
                {
                    "round": round_.number,
                    "labels": labels_in(round_),
                    "version": run.version,
                    "deployed": run.deployed,
                    "next_round": run.next_round.number if run.next_round else None,
                    **{key: metrics.get(key) for key in ("chair_i", "chair_s", "pope_f1", "coverage", "mean_words")},
                }
            )
            self.stdout.write(json.dumps(summary[-1]))
        self.stdout.write(json.dumps({"rounds": summary}))

    def _collect(self, round_: Round, target: int, options: dict[str, Any]) -> None:
        """Until the round has `target` labels: simulated annotators, or real ones waited for."""
        have = labels_in(round_)
        if have >= target:
            return
        if options["simulate"]:
            annotators = options["simulate"]
            call_command(
                "simulate_annotators",
                n=annotators,
                noise=options["noise"],
                correction_style=options["correction_style"],
                url=options["url"],
                limit=None if options["labels_per_round"] is None else math.ceil((target - have) / annotators),
                seed=round_.number - 1,
                verbosity=0,
                stdout=self.stdout,
            )
            return
        deadline = time.monotonic() + options["label_timeout"]
        with tqdm(total=target, initial=have, desc=f"labels of {round_}", unit="label", disable=None) as bar:
            while have < target:
                if time.monotonic() > deadline:
                    raise CommandError(f"{round_} has {have} of {target} labels after --label-timeout")
                time.sleep(options["poll"])
                have = labels_in(round_)
                bar.n = min(have, target)
                bar.refresh()
