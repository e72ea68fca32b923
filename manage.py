#!/usr/bin/env python
"""Django's command-line utility for FactLoop."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        # Load the settings up front so that a bad environment is reported in one line
        # that names the variable, not as a traceback from deep inside a command.
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018
    except ImproperlyConfigured as error:
        print(f"factloop: configuration error: {error}", file=sys.stderr)
        sys.exit(2)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
