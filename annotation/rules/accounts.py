"""Accounts: annotators and admins, their roles and passwords."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser, Group
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from annotation.rules.roles import ANNOTATORS_GROUP

Role = Literal["annotator", "admin"]


@dataclass(frozen=True)
class EnsuredUser:
    user: AbstractUser
    created: bool
    # The password that was set by this call, when it generated one; None otherwise.
    generated_password: str | None
    password_changed: bool


def ensure_user(
    username: str, *, role: Role, password: str | None = None, email: str = "", reactivate: bool = False
) -> EnsuredUser:
    """Create the user with the role, or give an existing user the role. Idempotent.

    A new user gets `password`, or a generated one that is returned once. An existing user
    keeps their password unless `password` is given. A deactivated account stays
    deactivated (ValidationError) unless `reactivate`: an admin's decision is not undone
    as a side effect. Raises ValidationError (nothing written) for a bad username or a
    password the validators refuse.
    """
    User = get_user_model()
    username_field = User._meta.get_field("username")
    try:
        username_field.clean(username, None)
    except ValidationError as error:
        raise ValidationError(f"invalid username {username!r}: {' '.join(error.messages)}") from None

    with transaction.atomic():
        user, created = User.objects.select_for_update().get_or_create(username=username, defaults={"email": email})
        if not created and not user.is_active and not reactivate:
            raise ValidationError(f"user {username!r} is deactivated; reactivate it explicitly (--reactivate)")
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


def ensure_label_account(username: str) -> AbstractUser:
    """The annotator account imported labels are recorded under: created without a usable
    password (nobody signs in with it), or an existing annotator given the role."""
    ensured = ensure_user(username, role="annotator")
    if ensured.created:
        ensured.user.set_unusable_password()
        ensured.user.save(update_fields=["password"])
    return ensured.user
