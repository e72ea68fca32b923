"""What the import commands share: running an import and reporting its rows."""

from __future__ import annotations

from collections.abc import Callable

from django.core.management.base import BaseCommand, CommandError

from annotation.data.importers import ImportFailed, ImportReport


def run_import(command: BaseCommand, job: Callable[[], ImportReport]) -> ImportReport:
    """Run `job`; a refused import (ValueError) or one with bad rows (ImportFailed, nothing
    written) becomes a CommandError, each bad row reported with its reason."""
    try:
        report = job()
    except ImportFailed as failed:
        for problem in failed.report.problems:
            command.stderr.write(str(problem))
        raise CommandError(f"{failed}; --skip-bad imports the good rows") from None
    except ValueError as error:
        raise CommandError(str(error)) from None
    for problem in report.problems:
        command.stderr.write(f"skipped {problem}")
    command.stdout.write(
        f"imported {report.prompts} prompts on {report.images} images from {report.rows} rows"
        + (f"; {report.already} already imported" if report.already else "")
        + (f"; held-out prompts in dataset {report.dataset!r}" if report.dataset else "")
        + (f"; skipped {len(report.problems)}" if report.problems else "")
    )
    return report
