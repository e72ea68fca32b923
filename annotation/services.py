"""Workflows that write several rows, each in one transaction."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.models import Job
from annotation.roles import ANNOTATORS_GROUP
from webapp.celery import QUEUES

Role = Literal["annotator", "admin"]


# ---------------------------------------------------------------------------------------
# Jobs


def enqueue_job(kind: Job.Kind, *, queue: str, params: dict[str, Any] | None = None, created_by: Any = None) -> Job:
    """Create a Job row and send its task once the surrounding transaction commits.

    Sending on commit matters twice over: a worker never receives the id of a row it cannot
    see yet, and a rolled-back transaction sends nothing.
    """
    from annotation.tasks import task_for_kind

    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; expected one of {', '.join(QUEUES)}")
    task = task_for_kind(kind)
    with transaction.atomic():
        job = Job.objects.create(kind=kind, queue=queue, params=params or {}, created_by=created_by)
        job_id = job.pk
        transaction.on_commit(lambda: task.apply_async(args=(job_id,), queue=queue))
    return job


# ---------------------------------------------------------------------------------------
# People


@dataclass(frozen=True)
class EnsuredUser:
    user: AbstractUser
    created: bool
    # The password that was set by this call, when it generated one; None otherwise.
    generated_password: str | None
    password_changed: bool


def ensure_user(username: str, *, role: Role, password: str | None = None, email: str = "") -> EnsuredUser:
    """Create the user with the role, or give an existing user the role. Idempotent.

    A new user gets `password`, or a generated one that is returned once. An existing user
    keeps their password unless `password` is given. Raises ValidationError (nothing
    written) for a bad username or a password the validators refuse.
    """
    User = get_user_model()
    username_field = User._meta.get_field("username")
    try:
        username_field.clean(username, None)
    except ValidationError as error:
        raise ValidationError(f"invalid username {username!r}: {' '.join(error.messages)}") from None

    with transaction.atomic():
        user, created = User.objects.select_for_update().get_or_create(username=username, defaults={"email": email})
        generated = None
        if password is None and created:
            generated = secrets.token_urlsafe(12)
            password = generated
        if password is not None:
            # Raises ValidationError and rolls the transaction back, creation included.
            validate_password(password, user)
            user.set_password(password)
        if email and user.email != email:
            user.email = email
        if role == "admin":
            user.is_staff = True
            user.is_superuser = True
        user.is_active = True
        user.save()
        if role == "annotator":
            group, _ = Group.objects.get_or_create(name=ANNOTATORS_GROUP)
            user.groups.add(group)
    return EnsuredUser(user=user, created=created, generated_password=generated, password_changed=password is not None)
