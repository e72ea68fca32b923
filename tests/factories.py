"""Row factories for tests."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User

from annotation.models import Job
from annotation.services import Role, ensure_user

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str, role: Role | None, password: str = PASSWORD) -> User:
    """A user with the role ("annotator", "admin") or none (an outsider)."""
    if role is None:
        return User.objects.create_user(username=username, password=password)
    user = ensure_user(username, role=role, password=password).user
    assert isinstance(user, User)
    return user


def make_job(**fields: Any) -> Job:
    defaults: dict[str, Any] = {"kind": Job.Kind.HEALTHCHECK, "queue": "generate"}
    defaults.update(fields)
    return Job.objects.create(**defaults)
