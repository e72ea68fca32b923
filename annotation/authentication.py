"""API authentication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from annotation.roles import ANNOTATORS_GROUP


@cache
def _token_sql() -> tuple[str, list[str]]:
    User = get_user_model()
    fields = [field.attname for field in User._meta.concrete_fields]
    columns = ", ".join(f"u.{connection.ops.quote_name(field.column)}" for field in User._meta.concrete_fields)
    memberships = User.groups.through._meta.db_table
    sql = (
        f"SELECT {columns}, t.created, EXISTS (SELECT 1 FROM {memberships} m JOIN {Group._meta.db_table} g "
        f"ON g.id = m.group_id WHERE m.user_id = u.id AND g.name = %s) "
        f"FROM {Token._meta.db_table} t JOIN {User._meta.db_table} u ON u.id = t.user_id WHERE t.key = %s"
    )
    return sql, fields


class RoleTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, with the user's annotator role read in the same query.

    The annotation API checks the role on every request, and building this query through
    the ORM cost more than running it (bench/annotate.py), so it is written out once."""

    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        sql, fields = _token_sql()
        with connection.cursor() as cursor:
            cursor.execute(sql, [ANNOTATORS_GROUP, key])
            row = cursor.fetchone()
        if row is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        *values, created, annotator = row
        user: Any = get_user_model().from_db(connection.alias, fields, values)
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        if timezone.is_naive(created):  # SQLite's raw rows hold UTC without the zone
            created = timezone.make_aware(created, UTC)
        if token_expired(created):
            raise exceptions.AuthenticationFailed("Token expired; sign in again for a new one.")
        user._factloop_groups = {ANNOTATORS_GROUP} if annotator else set()
        return user, Token(key=key, user=user, created=created)


def token_expires_at(created: datetime) -> datetime:
    return created + timedelta(hours=settings.FACTLOOP_TOKEN_HOURS)


def token_expired(created: datetime) -> bool:
    return timezone.now() >= token_expires_at(created)


def issue_token(user: Any) -> Token:
    """The user's API token: the live one, or (none, or expired) a new one in its place."""
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(user=user).first()
        if token is not None and not token_expired(token.created):
            return token
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user)


def revoke_tokens_on_credential_change(sender: Any, instance: Any, **_: Any) -> None:
    """pre_save of the user model: a new password or a deactivation deletes the user's API
    tokens (sessions already end with a password change: Django's session hash)."""
    if instance.pk is None:
        return
    before = sender.objects.filter(pk=instance.pk).values("password", "is_active").first()
    if before and (before["password"] != instance.password or (before["is_active"] and not instance.is_active)):
        Token.objects.filter(user_id=instance.pk).delete()


def lockout_message() -> str:
    return f"Too many failed sign-ins; try again in {settings.FACTLOOP_LOGIN_COOLOFF_MINUTES} minutes."


def lockout_response(request: HttpRequest, original_response: HttpResponse | None, credentials: Any) -> HttpResponse:
    """django-axes' answer to a locked-out sign-in (AXES_LOCKOUT_CALLABLE): JSON for the
    API, the sign-in page's own look for people; 429 both ways."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": lockout_message()}, status=429)
    return render(request, "annotation/locked_out.html", {"message": lockout_message()}, status=429)
