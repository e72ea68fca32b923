"""Middleware of the whole site: the Content-Security-Policy on every answer, URLs that no
view should ever see (a NUL character) refused first, and request bodies bounded by who
sends them before anything reads them."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.urls import Resolver404, resolve
from rest_framework.exceptions import AuthenticationFailed

from annotation.rules.roles import is_admin
from annotation.web.authentication import RoleTokenAuthentication

# The two routes an admin uploads an import archive to (the admin's form and the API).
IMPORT_ROUTES = frozenset({"annotation_prompt_import", "api-admin-imports"})


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


class BodyLimitMiddleware:
    """Refuse a body larger than its sender may send (413), from its Content-Length, before
    anything reads it: Django reads a multipart body whole (spooling file parts to disk)
    when CsrfViewMiddleware first looks at request.POST, authenticated or not.

    Nobody signed in: FACTLOOP_MAX_ANONYMOUS_BODY_BYTES. Signed in (a session or an API
    token): DATA_UPLOAD_MAX_MEMORY_SIZE. An admin's upload to an import route:
    FACTLOOP_MAX_IMPORT_BYTES. Who sent it is looked up only for a body over the smallest
    cap. A body without a length (chunked) is refused too: Django would read none of it."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return self._refuse(request, 400, "The Content-Length header is not a number.")
        if not request.META.get("CONTENT_LENGTH") and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", ""):
            return self._refuse(request, 411, "Send the body with a Content-Length.")
        if length > settings.FACTLOOP_MAX_ANONYMOUS_BODY_BYTES:
            limit = self._limit(request)
            if length > limit:
                return self._refuse(request, 413, f"The body is {length} bytes; the limit for this request is {limit}.")
        return self.get_response(request)

    @staticmethod
    def _limit(request: HttpRequest) -> int:
        user = request.user if request.user.is_authenticated else None
        if user is None and request.META.get("HTTP_AUTHORIZATION"):
            try:
                found = RoleTokenAuthentication().authenticate(request)  # type: ignore[arg-type]
            except AuthenticationFailed:
                found = None
            user = found[0] if found else None
        if user is None:
            return int(settings.FACTLOOP_MAX_ANONYMOUS_BODY_BYTES)
        try:
            route = resolve(request.path_info).url_name
        except Resolver404:
            route = None
        if route in IMPORT_ROUTES and is_admin(user):
            # The archive, plus the multipart envelope around it and the form's other fields.
            return int(settings.FACTLOOP_MAX_IMPORT_BYTES) + settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return int(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)

    @staticmethod
    def _refuse(request: HttpRequest, status: int, message: str) -> HttpResponse:
        # The body is never read (a WSGI server drains or drops it; none is stored).
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"detail": message}, status=status)
        else:
            response = HttpResponse(message, status=status, content_type="text/plain")
        return response
