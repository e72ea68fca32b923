from __future__ import annotations

import json
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from annotation.errors import Refused
from annotation.evaluation import RlhfFailed, evaluate_version, export_heldout
from annotation.models import Prompt
from models.registry import Registry, RegistryError


class Command(BaseCommand):
    help = (
        "Evaluate a registered policy version on the database's held-out prompts through the vLLM server "
        "(FACTLOOP_VLLM_URL; the version's adapter is loaded under a temporary name and unloaded after): CHAIR, "
        "Object HalBench, POPE, question accuracy, length, each with a bootstrap interval. The result is kept "
        "on the version (the admin's per-round plots draw it) and printed as JSON."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> Any:
        # --version names the model version here, as `register_model` and the registry do;
        # Django's own --version (its release) gives way to it.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--version", required=True, help="a registered policy version")
        parser.add_argument("--prompts", default=Prompt.Split.HELDOUT, choices=Prompt.Split.values)
        parser.add_argument("--limit", type=int, help="only the first N prompts (oldest first)")
        parser.add_argument("--out", type=Path, help="also write the whole result (per-item records too) here")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1")
        registry = Registry(settings.FACTLOOP_MODEL_DIR)
        name = options["version"]
        try:
            registry.get(name)
        except RegistryError as error:
            raise CommandError(str(error)) from None
        with tempfile.TemporaryDirectory(prefix="factloop-evaluate-") as scratch:
            work = Path(scratch)
            try:
                export_heldout(work / "heldout", split=options["prompts"], limit=options["limit"])
                self.stderr.write(f"evaluating {name} through {settings.FACTLOOP_VLLM_URL} ...")
                result = evaluate_version(name, work / "heldout", work / "evaluation.json", log=work / "evaluate.log")
            except Refused as error:
                raise CommandError(error.message) from None
            except RlhfFailed as error:
                raise CommandError(str(error)) from None
            registry.record_evaluation(name, result)
            if options["out"]:
                options["out"].write_text(json.dumps(result, indent=1) + "\n")
        intervals = result["intervals"]
        for key, value in sorted(result["metrics"].items()):
            low, high = intervals.get(key, (value, value))
            self.stderr.write(f"  {key:<28} {value:8.4f}  [{low:.4f}, {high:.4f}]")
        summary = {k: result[k] for k in ("policy", "metrics", "intervals", "seconds")}
        self.stdout.write(json.dumps(summary))
