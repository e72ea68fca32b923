"""The two roles of FactLoop and the checks that guard them.

- Annotators are members of the `annotators` group (created by a data migration). They see
  the annotator pages and the annotator API, nothing else.
- Admins are staff users (`is_staff`). They reach the Django admin and the admin API.
  An admin may also annotate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.http import HttpRequest
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

if TYPE_CHECKING:
    # Not at run time: rest_framework.views reads the authentication classes when imported,
    # and annotation.web.authentication imports this module.
    from rest_framework.views import APIView

ANNOTATORS_GROUP = "annotators"


def is_admin(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and user.is_active and getattr(user, "is_staff", False))


def is_annotator(user: AbstractBaseUser | AnonymousUser) -> bool:
    if not (user.is_authenticated and user.is_active):
        return False
    if is_admin(user):
        return True
    # The group list is cached on the user object for the request (prefetch-free check).
    cached: Any = user
    groups = getattr(cached, "_factloop_groups", None)
    if groups is None:
        groups = set(cached.groups.values_list("name", flat=True))
        cached._factloop_groups = groups
    return ANNOTATORS_GROUP in groups


def role_name(user: AbstractBaseUser | AnonymousUser) -> str:
    if is_admin(user):
        return "admin"
    if is_annotator(user):
        return "annotator"
    return "none"


def role_context(request: HttpRequest) -> dict[str, Any]:
    """Template context processor: `factloop_role` for the navigation."""
    return {"factloop_role": role_name(request.user)}


class IsAdmin(BasePermission):
    message = "This endpoint is for FactLoop admins only."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return is_admin(request.user)


class IsAnnotator(BasePermission):
    message = "This endpoint is for annotators only."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return is_annotator(request.user)
