"""API authentication."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

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
from rest_framework.throttling import ScopedRateThrottle, SimpleRateThrottle, UserRateThrottle

from annotation.rules.roles import ANNOTATORS_GROUP

if TYPE_CHECKING:  # DRF loads this module (its settings name it) while rest_framework.views is imported
    from rest_framework.request import Request
    from rest_framework.views import APIView


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
    """A new API token for the user, in place of any earlier one: every sign-in rotates it,
    so a token that leaked dies with the owner's next sign-in (or sign-out)."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user)


def live_token(user: Any) -> Token:
    """The user's live API token, or a new one (for the simulation's annotators, which share a
    user across processes and must not rotate each other's token away)."""
    with transaction.atomic():
        token = Token.objects.select_for_update().filter(user=user).first()
        if token is not None and not token_expired(token.created):
            return token
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user)


def revoke_tokens_on_logout(sender: Any, request: HttpRequest | None = None, user: Any = None, **_: Any) -> None:
    """user_logged_out: signing out of the site ends the API token too."""
    if user is not None and user.pk is not None:
        Token.objects.filter(user_id=user.pk).delete()


def client_address(request: HttpRequest) -> str:
    """The client's address: REMOTE_ADDR, or behind FACTLOOP_TRUSTED_PROXIES proxies the
    address the outermost one saw (X-Forwarded-For lists each hop's client, so it is the
    N-th from the end; earlier entries are whatever the client claimed, never trusted).
    django-axes (AXES_CLIENT_IP_CALLABLE) and the API's throttles both ask here."""
    remote = str(request.META.get("REMOTE_ADDR") or "")
    trusted = settings.FACTLOOP_TRUSTED_PROXIES
    if not trusted:
        return remote
    hops = [hop.strip() for hop in str(request.META.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()]
    return hops[-trusted] if len(hops) >= trusted else (hops[0] if hops else remote)


class _Rates(SimpleRateThrottle):
    """A DRF throttle whose rate is a FactLoop setting (read per request, so a changed
    setting applies at once) and whose client address is `client_address`."""

    setting = ""

    def get_rate(self) -> str:
        return str(getattr(settings, self.setting))

    def get_ident(self, request: Request) -> str:
        return client_address(request._request)

    def per_address(self, request: Request) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AnonymousThrottle(_Rates):
    scope, setting = "anonymous", "FACTLOOP_THROTTLE_ANONYMOUS"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if request.user is not None and request.user.is_authenticated:
            return None
        return self.per_address(request)


class UserThrottle(_Rates, UserRateThrottle):
    scope, setting = "user", "FACTLOOP_THROTTLE_USER"

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if request.user is None or not request.user.is_authenticated:
            return None  # AnonymousThrottle's
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class ExpensiveThrottle(_Rates, ScopedRateThrottle):
    """For views with `throttle_scope = "expensive"`, per client address whoever asks."""

    setting = "FACTLOOP_THROTTLE_EXPENSIVE"

    def allow_request(self, request: Request, view: APIView) -> bool:
        if getattr(view, "throttle_scope", None) != "expensive":
            return True
        self.scope = "expensive"
        self.rate = self.get_rate()
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return SimpleRateThrottle.allow_request(self, request, view)

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        return self.per_address(request)


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
