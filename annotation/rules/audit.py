"""The audit log: one AuditEvent row per change an admin would ask about later.

The actor is the signed-in user of the request that made the change (AuditActorMiddleware
keeps it for the request), the user a service names, or else the command line.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from annotation.models import AuditEvent

_ACTOR: contextvars.ContextVar[Any] = contextvars.ContextVar("audit_actor", default=None)
COMMAND_LINE = "command line"


def record(action: str, target: Any, *, by: Any = None, **detail: Any) -> AuditEvent:
    actor = by if getattr(by, "is_authenticated", False) else _ACTOR.get()
    if not getattr(actor, "is_authenticated", False):
        actor = None
    return AuditEvent.objects.create(
        actor=actor,
        actor_name=actor.get_username() if actor is not None else COMMAND_LINE,
        action=action,
        target=str(target)[:255],
        detail=detail,
    )


class AuditActorMiddleware:
    """Makes the request's user the actor of whatever it changes (signals included)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _ACTOR.set(getattr(request, "user", None))
        try:
            return self.get_response(request)
        finally:
            _ACTOR.reset(token)


ROLE_FIELDS = ("is_staff", "is_superuser", "is_active")


def record_role_fields(sender: Any, instance: Any, **_: Any) -> None:
    """pre_save of the user model: admin rights and activation changes."""
    if instance.pk is None:
        return
    before = sender.objects.filter(pk=instance.pk).values(*ROLE_FIELDS).first()
    if before is None:
        return
    changed = {field: getattr(instance, field) for field in ROLE_FIELDS if before[field] != getattr(instance, field)}
    if changed:
        record(AuditEvent.Action.ROLE, instance.get_username(), **changed)


def record_group_changes(sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **_: Any) -> None:
    """m2m_changed of user.groups: group memberships (the annotator role is a group)."""
    if action not in ("post_add", "post_remove", "post_clear") or reverse:
        return
    from django.contrib.auth.models import Group

    names = sorted(Group.objects.filter(pk__in=pk_set or []).values_list("name", flat=True))
    verb = {"post_add": "added to", "post_remove": "removed from", "post_clear": "removed from every group"}[action]
    record(AuditEvent.Action.ROLE, instance.get_username(), groups=names, change=verb)
