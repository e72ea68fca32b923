"""Middleware of the whole site: the Content-Security-Policy on every answer, and URLs that
no view should ever see (a NUL character) refused first."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class ContentSecurityPolicyMiddleware:
    """Adds settings.CONTENT_SECURITY_POLICY (Django 5.2 has no CSP of its own; 6.0 adds
    one). Model output is escaped everywhere; the policy is the second line of defence:
    no script runs unless it comes from this site."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class RejectNulMiddleware:
    """A NUL character in the path or the query string is never meaningful: 400 before any
    view runs (PostgreSQL cannot store it, so an admin filter like ?status=%00 would end in
    a database error). Form and API fields are refused by Django's and DRF's own NUL
    validators."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            return HttpResponseBadRequest("NUL characters are not allowed in a URL.", content_type="text/plain")
        return self.get_response(request)
