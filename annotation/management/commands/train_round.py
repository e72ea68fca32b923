from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm  # type: ignore[import-untyped]

from annotation.loop.training import (
    METHODS,
    Options,
    StepFailed,
    TrainingRefused,
    begin,
    plan,
    queue_run,
    run_steps,
    target_round,
)
from contract.launch import LAUNCHERS
from contract.protocols import PROTOCOLS


class Command(BaseCommand):
    help = (
        "One alignment iteration: freeze the round's labels, export them, train (DDPO, DPO, or a reward model and "
        "PPO/GRPO/RLOO), evaluate hallucination on the round's held-out dataset (refused before training when it "
        "cannot be scored), register the new version if it is not worse than the current one, hot-load it into "
        "vLLM, and open the next round with its candidates queued. Runs as a job on the `train` queue unless --inline."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--method", choices=METHODS, default="ddpo")
        parser.add_argument("--round", type=int, help="the round to train (default: the newest open round)")
        parser.add_argument("--config", help="a YAML file of trainer settings (rlhf/config.py)")
        parser.add_argument(
            "--set", action="append", default=[], metavar="KEY=VALUE", help="override a trainer setting (repeatable)"
        )
        parser.add_argument("--reward-config", help="a YAML file of reward-model settings (PPO, GRPO, RLOO)")
        parser.add_argument(
            "--gate-metric",
            default="",
            help="metric[:margin],... of chair_i, chair_s, pope_f1, coverage: the new policy must not be measurably "
            "worse on any (FACTLOOP_GATE_METRICS, default chair_i,coverage)",
        )
        parser.add_argument(
            "--gate-margin",
            type=float,
            help="how much worse the new policy may be on a metric given without a margin (FACTLOOP_GATE_MARGIN)",
        )
        parser.add_argument(
            "--gate-protocol",
            default="",
            choices=["", *PROTOCOLS],
            help="what both evaluations ask: factloop, or a published protocol, pope, object_halbench or amber "
            "(FACTLOOP_GATE_PROTOCOL, default factloop)",
        )
        parser.add_argument(
            "--eval-items",
            type=int,
            default=0,
            help="held-out prompts to evaluate on, the first N (FACTLOOP_EVAL_ITEMS)",
        )
        parser.add_argument(
            "--dataset",
            default="",
            help="the held-out dataset to evaluate on (default: the one the round recorded when it started)",
        )
        parser.add_argument("--next-prompts", type=int, help="prompts of the next round (default: as many as this)")
        parser.add_argument(
            "--launcher",
            choices=LAUNCHERS,
            default="",
            help="how the trainers run: one process (none), or accelerate launch: DDP, FSDP2, DeepSpeed "
            "(FACTLOOP_TRAIN_LAUNCHER)",
        )
        parser.add_argument(
            "--accelerate-config",
            help="with --launcher accelerate: a config file, or ddp, fsdp2, zero2, zero3 from deploy/accelerate/ "
            "(FACTLOOP_ACCELERATE_CONFIG; default ddp)",
        )
        parser.add_argument(
            "--num-processes",
            type=int,
            default=0,
            help="with --launcher accelerate: processes (GPUs) to train on (FACTLOOP_TRAIN_PROCESSES)",
        )
        parser.add_argument("--force", action="store_true", help="deploy even if the gate refuses the new policy")
        parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
        parser.add_argument("--inline", action="store_true", help="run here instead of as a Celery job")
        parser.add_argument("--resume", action="store_true", help="finish the round's unfinished run")

    def handle(self, *args: Any, **options: Any) -> None:

        try:
            settings_ = Options(
                method=options["method"],
                config=options["config"],
                overrides=list(options["set"]),
                reward_config=options["reward_config"],
                force=options["force"],
                gate_metric=options["gate_metric"],
                gate_margin=options["gate_margin"],
                gate_protocol=options["gate_protocol"],
                eval_items=options["eval_items"],
                dataset=options["dataset"],
                next_prompts=options["next_prompts"],
                launcher=options["launcher"],
                accelerate_config=options["accelerate_config"],
                num_processes=options["num_processes"],
            )
            round_ = target_round(options["round"], resume=options["resume"])
            if options["dry_run"]:
                self.stdout.write(json.dumps(plan(round_, settings_), indent=2))
                return
            if not options["inline"]:  # the run and its job in one transaction, as the admin's Train page
                run = queue_run(round_, settings_, resume=options["resume"])
                assert run.job is not None
                summary = {"run": run.pk, "job": run.job.pk, "queue": "train", "work_dir": run.work_dir}
                self.stdout.write(json.dumps(summary))
                return
            run = begin(round_, settings_, resume=options["resume"])
        except TrainingRefused as error:
            raise CommandError(str(error)) from None
        with tqdm(total=len(run.steps) or 1, desc="train_round", unit="step", disable=options["verbosity"] < 1) as bar:

            def progress(step: str, done: int, total: int) -> None:
                bar.total = total
                bar.n = done
                bar.set_postfix_str(step)
                bar.refresh()

            try:
                run = run_steps(run, progress=progress)
            except TrainingRefused as error:
                raise CommandError(str(error)) from None
            except StepFailed as error:
                raise CommandError(f"{error}\nthe run is kept: `manage.py train_round --resume` finishes it") from None
        summary = {
            "run": run.pk,
            "round": run.round.number,
            "version": run.version,
            "deployed": run.deployed,
            "next_round": run.next_round.number if run.next_round else None,
            "metrics": run.steps.get("evaluate", {}).get("detail"),
            "gate": run.steps.get("gate", {}).get("detail"),
        }
        self.stdout.write(json.dumps(summary))
