"""Domain errors: plain exceptions that say what is wrong, in words. Which HTTP status a
refusal becomes is the interface's choice (annotation.web.annotator_api.refusal_status)."""

from __future__ import annotations


class Refused(Exception):
    """The request conflicts with the state of things (a lease that ended, a frozen round, a
    result of the wrong kind)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Invalid(Refused):
    """The request itself is wrong (a ranking of other candidates, an unknown category)."""


class Busy(Refused):
    """Nothing is wrong, but it cannot be done right now; try again."""
