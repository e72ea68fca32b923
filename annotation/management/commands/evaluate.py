from __future__ import annotations

import json
import os
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, OutputWrapper
from django.utils import timezone

from annotation.loop.evaluation import RlhfFailed, amber_responses, described, evaluate_version, export_heldout
from annotation.rules.datasets import choose_dataset
from annotation.rules.errors import Refused
from contract.protocols import FACTLOOP, PROTOCOLS
from models.registry import Registry, RegistryError


class Command(BaseCommand):
    help = (
        "Evaluate a registered policy version on a held-out dataset through the vLLM server (FACTLOOP_VLLM_URL; "
        "the version's adapter is loaded under a temporary name and unloaded after): CHAIR, Object HalBench, POPE, "
        "question accuracy, length, each with a bootstrap interval; --protocol asks a published protocol instead. "
        "The result, which names the dataset, its item "
        "count and digest, is kept on the version (the admin's per-round plots draw it) and printed as JSON."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        # --version names the model version here, as `register_model` and the registry do;
        # Django's own --version (its release) gives way to it.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--version", required=True, help="a registered policy version")
        parser.add_argument("--dataset", help="the held-out dataset to score (needed when there are several)")
        parser.add_argument("--limit", type=int, help="only the dataset's first N prompts (oldest first)")
        parser.add_argument(
            "--protocol",
            default=FACTLOOP,
            choices=PROTOCOLS,
            help="what is asked and how it is read: factloop (FactLoop's own, the default), pope (POPE: 500 "
            "images, 3 present and 3 absent objects each, per split), object_halbench (RLHF-V's: 300 prompts, "
            "its synonym list) or amber (AMBER's generative task: CHAIR, Cover, Hal, Cog; a set from import_amber)",
        )
        parser.add_argument("--out", type=Path, help="also write the whole result (per-item records too) here")
        parser.add_argument(
            "--amber-responses",
            type=Path,
            help="with --protocol amber: also write the descriptions as AMBER's inference.py reads them "
            "(--inference_data), for AMBER's own scorer",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        if options["amber_responses"] and PROTOCOLS[options["protocol"]].scorer != "amber":
            raise CommandError("--amber-responses needs --protocol amber")
        registry = Registry(settings.FACTLOOP_MODEL_DIR)
        name = options["version"]
        try:
            registry.get(name)
        except RegistryError as error:
            raise CommandError(str(error)) from None
        # The evaluator's log outlives a failure (the error names it); a success removes it.
        stamp = timezone.now().strftime("%Y%m%dT%H%M%S")
        log = Path(settings.FACTLOOP_TRAIN_DIR) / "evaluations" / f"{name}-{stamp}-{os.getpid()}.log"
        with tempfile.TemporaryDirectory(prefix="factloop-evaluate-") as scratch:
            work = Path(scratch)
            try:
                dataset = choose_dataset(options["dataset"])
                manifest = export_heldout(
                    work / "heldout", dataset, limit=options["limit"], protocol=options["protocol"]
                )
                self.stderr.write(f"evaluating {name} on {described(manifest)} through {settings.FACTLOOP_VLLM_URL}")
                result = evaluate_version(
                    name,
                    work / "heldout",
                    work / "evaluation.json",
                    log=log,
                    echo=_Echo(self.stderr),
                    protocol=options["protocol"],
                )
            except Refused as error:
                raise CommandError(error.message) from None
            except RlhfFailed as error:
                raise CommandError(str(error)) from None
            registry.record_evaluation(name, result)
            log.unlink(missing_ok=True)
            if options["out"]:
                options["out"].write_text(json.dumps(result, indent=1) + "\n")
            if options["amber_responses"]:
                try:
                    responses = amber_responses(result)
                except Refused as error:
                    raise CommandError(error.message) from None
                options["amber_responses"].write_text(json.dumps(responses, indent=1) + "\n")
        intervals = result["intervals"]
        for key, value in sorted(result["metrics"].items()):
            low, high = intervals.get(key, (value, value))
            self.stderr.write(f"  {key:<28} {value:8.4f}  [{low:.4f}, {high:.4f}]")
        chosen = PROTOCOLS[options["protocol"]]
        measured = result["settings"].get("protocol_size", {})
        if not result["settings"].get("comparable", True):
            fixed = ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in chosen.size.items())
            here = ", ".join(f"{value} {key.replace('_', ' ')}" for key, value in measured.items() if value)
            self.stderr.write(
                f"note: not comparable with published {chosen.name} figures: they were measured on {fixed}; "
                f"this set gave {here}"
            )
        summary = {k: result[k] for k in ("policy", "metrics", "intervals", "seconds")}
        summary["protocol"] = {"name": chosen.name, **measured, "comparable": result["settings"].get("comparable")}
        summary["heldout"] = {"dataset": manifest["dataset"], "items": manifest["items"], "digest": manifest["digest"]}
        self.stdout.write(json.dumps(summary))


class _Echo:
    """The evaluator's output, as it comes, onto the command's stderr (no line endings added)."""

    def __init__(self, stream: OutputWrapper) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(text, ending="")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
