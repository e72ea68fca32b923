from __future__ import annotations

import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from annotation.loop.deployment import DeployRefused, deploy_version


class Command(BaseCommand):
    help = (
        "Serve a registered policy version: hot-load it into the vLLM server at FACTLOOP_VLLM_URL and "
        "mark it `serving` (the one before becomes `ready`). Naming an earlier version rolls back; "
        "both are recorded in the audit log."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("version", help="a registered policy version (manage.py shell: models.registry)")
        parser.add_argument("--reason", default="", help="why, for the audit log")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            deployment = deploy_version(options["version"], reason=options["reason"])
        except DeployRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(json.dumps(deployment.as_dict()))
