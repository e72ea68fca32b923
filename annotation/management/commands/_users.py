"""Shared body of create_annotator and create_admin (underscore: not a command itself)."""

from __future__ import annotations

import sys
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from annotation.rules.accounts import Role, ensure_user


class EnsureUserCommand(BaseCommand):
    role: Role

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("username")
        secret = parser.add_mutually_exclusive_group()
        secret.add_argument(
            "--password",
            help="Set this password (visible to other local users in the process list; prefer --password-stdin).",
        )
        secret.add_argument(
            "--password-stdin", action="store_true", help="Read the password from the first line of standard input."
        )
        parser.add_argument("--email", default="")
        parser.add_argument("--reactivate", action="store_true", help="activate a deactivated account again")

    def handle(self, *args: Any, **options: Any) -> None:
        password = options["password"]
        if options["password_stdin"]:
            line = sys.stdin.readline()
            password = line.rstrip("\r\n")
            if not password:
                raise CommandError("--password-stdin: standard input held no password")
        try:
            outcome = ensure_user(
                options["username"],
                role=self.role,
                password=password,
                email=options["email"],
                reactivate=options["reactivate"],
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None

        name = outcome.user.get_username()
        if outcome.created:
            self.stdout.write(f"Created {self.role} {name}.")
        else:
            self.stdout.write(f"{self.role.capitalize()} {name} already existed; the role is in place.")
        if outcome.generated_password:
            self.stdout.write(f"Password: {outcome.generated_password}")
        elif outcome.password_changed:
            self.stdout.write("Password set.")
        else:
            self.stdout.write("Password unchanged (give --password or --password-stdin to set one).")
