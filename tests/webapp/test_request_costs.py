"""What a request may cost, above all before anyone knows who sent it: the JSON depth check
is linear in the body, in time and in memory; a body is refused by its length before
anything reads it; the API is throttled; sign-in guessing from one address locks only that
address; tokens rotate at sign-in and die at sign-out; the shipped example secrets are
refused."""

from __future__ import annotations

import contextlib
import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files import uploadedfile
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.rules import limits
from tests.conftest import REPO
from tests.factories import PASSWORD
from webapp.env import is_placeholder

# A body that made the old string-skipping regex restart at every quote: an unterminated
# string of escaped quotes (quadratic: 16 KB took 0.85 s of CPU, 32 KB 3.4 s).
ADVERSARIAL: dict[str, Callable[[int], bytes]] = {
    "escaped quotes": lambda n: b'"' + b'\\"' * (n // 2),
    "bare quotes": lambda n: b'"' * n,
    "backslash runs": lambda n: b'["' + b"\\\\\\" * (n // 3),
    "brackets in strings": lambda n: b'["' + b"[{" * (n // 2),
    "closing brackets": lambda n: b"]" * n,
}


def _cpu_per_call(check: Callable[[], None]) -> float:
    """CPU seconds per call: the least of three runs, each repeating the call for at least
    50 ms (the least is the one that noise added least to)."""
    best = float("inf")
    for _ in range(3):
        calls, start = 0, time.process_time()
        while (spent := time.process_time() - start) < 0.05:
            check()
            calls += 1
        best = min(best, spent / calls)
    return best


def _check(body: bytes) -> Callable[[], None]:
    def run() -> None:
        with contextlib.suppress(limits.TooDeep):
            limits.check_json_depth(body)

    return run


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_the_depth_check_is_linear_in_the_body(shape: str) -> None:
    # Work grows with size: 4x the bytes cost about 4x linearly and 16x quadratically. The
    # check compares the two sizes' CPU in one process (a ratio, not a time limit).
    small, large = ADVERSARIAL[shape](8 * 1024), ADVERSARIAL[shape](32 * 1024)
    ratio = _cpu_per_call(_check(large)) / _cpu_per_call(_check(small))
    assert ratio < 8, f"{shape}: 4x the body cost {ratio:.1f}x the CPU"


@pytest.mark.parametrize("shape", sorted(ADVERSARIAL))
def test_the_depth_check_holds_a_few_copies_of_the_body_at_most(shape: str) -> None:
    body = ADVERSARIAL[shape](1024 * 1024)
    tracemalloc.start()
    try:
        _check(body)()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 4 * len(body), f"{shape}: {peak} bytes for a {len(body)}-byte body"


def test_the_depth_check_still_reads_strings_as_json_does() -> None:
    for fine in ('[[["a"]]]', '{"a": "[[[[", "b": [1, 2]}', '["\\\\"]', '["\\"[[[[[["]', '["\\\\\\"[[[[["]'):
        limits.check_json_depth(fine, limit=3)
    for deep in ("[" * 4, "[{" * 2, '["\\\\", [[[', '{"a\\"": [[[['):
        with pytest.raises(limits.TooDeep):
            limits.check_json_depth(deep, limit=3)


# ---------------------------------------------------------------------------------------
# Bodies bounded before they are read


@pytest.fixture
def spooled(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The names of the upload files Django spooled to disk during the test."""
    names: list[str] = []
    original = uploadedfile.TemporaryUploadedFile.__init__

    def spy(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        names.append(name)
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(uploadedfile.TemporaryUploadedFile, "__init__", spy)
    yield names


def multipart(size: int) -> tuple[bytes, str]:
    boundary = "factloopboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="archive"; filename="big.zip"\r\n'
        f"Content-Type: application/zip\r\n\r\n"
    ).encode()
    body += b"\0" * size + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def test_an_anonymous_upload_is_refused_before_a_byte_is_stored(spooled: list[str], db: None) -> None:
    """Before: CsrfViewMiddleware read the body (a well-formed csrftoken cookie is enough) and
    Django spooled the 3 MB file to disk, then answered 403."""
    body, content_type = multipart(3 * 1024 * 1024)  # over FILE_UPLOAD_MAX_MEMORY_SIZE: it would spool
    client = Client(enforce_csrf_checks=True)
    client.cookies["csrftoken"] = "a" * 32
    for path in ("/accounts/login/", "/api/auth/token/", "/api/admin/imports/"):
        response = client.generic("POST", path, body, content_type=content_type)
        assert response.status_code == 413, (path, response.status_code)
        assert "limit for this request is 65536" in response.content.decode()
    assert spooled == []


def test_a_signed_in_user_may_send_more_and_only_an_admin_an_archive(
    annotator: User, admin_user: User, settings: Any, spooled: list[str]
) -> None:
    settings.FACTLOOP_MAX_IMPORT_BYTES = 8 * 1024 * 1024
    raw, content_type = multipart(3 * 1024 * 1024)
    body: Any = raw  # APIClient.generic takes bytes as Django's client does (its stubs say str)
    api = APIClient()
    api.force_login(annotator)  # a session, as a browser has (the cap is decided before DRF runs)
    small = api.generic("POST", "/api/assignments/next/", "{}" + " " * 100_000, content_type="application/json")
    assert small.status_code != 413  # 100 KB: over the anonymous cap, under a user's
    refused = api.generic("POST", "/api/admin/imports/", body, content_type=content_type)
    assert refused.status_code == 413 and "1048576" in refused.json()["detail"]
    token = Token.objects.create(user=admin_user)
    admin = APIClient()
    admin.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    taken = admin.generic("POST", "/api/admin/imports/", body, content_type=content_type)
    assert taken.status_code == 400 and "kind" in str(taken.json())  # read, then refused for what it holds
    assert admin.generic("POST", "/api/admin/rounds/", body, content_type=content_type).status_code == 413
    assert len(spooled) == 1  # the admin's archive, and only it


def test_a_body_without_a_length_is_refused(db: None) -> None:
    response = Client().generic("POST", "/api/auth/token/", b"", HTTP_TRANSFER_ENCODING="chunked")
    assert response.status_code == 411


# ---------------------------------------------------------------------------------------
# Throttles, the lockout and tokens


def sign_in(api: APIClient, password: str, username: str = "ann", **extra: Any) -> Any:
    return api.post("/api/auth/token/", {"username": username, "password": password}, format="json", **extra)


def test_the_api_throttles_strangers_users_and_the_expensive_routes(annotator: User, settings: Any) -> None:
    settings.FACTLOOP_THROTTLE_ANONYMOUS = "2/minute"
    settings.FACTLOOP_THROTTLE_USER = "5/minute"
    settings.FACTLOOP_THROTTLE_EXPENSIVE = "1000/minute"
    # Nobody signed in reaches few routes past the permission check (DRF checks it before the
    # throttles): the sign-in itself is one.
    stranger = APIClient()
    assert [sign_in(stranger, "wrong", "x").status_code for _ in range(3)] == [400, 400, 429]
    assert sign_in(APIClient(REMOTE_ADDR="10.1.1.1"), "wrong", "x").status_code == 400  # per address
    settings.FACTLOOP_THROTTLE_ANONYMOUS = "100/minute"
    api = APIClient(REMOTE_ADDR="10.2.2.2")
    api.force_authenticate(annotator)
    assert [api.get("/api/me/").status_code for _ in range(6)] == [200] * 5 + [429]
    throttled = api.get("/api/me/")
    assert "Retry-After" in throttled.headers
    settings.FACTLOOP_THROTTLE_USER, settings.FACTLOOP_THROTTLE_EXPENSIVE = "1000/minute", "2/minute"
    schema = APIClient(REMOTE_ADDR="10.3.3.3")
    schema.force_authenticate(annotator)
    assert [schema.get("/api/schema/").status_code for _ in range(3)] == [200, 200, 429]
    signing = APIClient(REMOTE_ADDR="10.4.4.4")
    assert [sign_in(signing, PASSWORD).status_code for _ in range(3)] == [200, 200, 429]


def test_behind_trusted_proxies_the_client_is_the_address_the_outermost_proxy_saw(
    annotator: User, settings: Any
) -> None:
    settings.FACTLOOP_THROTTLE_ANONYMOUS = "2/minute"
    settings.FACTLOOP_TRUSTED_PROXIES = 1

    def ask(client_address: str, claimed: str = "") -> int:
        forwarded = f"{claimed}, {client_address}" if claimed else client_address
        api = APIClient(REMOTE_ADDR="10.9.9.9", HTTP_X_FORWARDED_FOR=forwarded)
        return int(sign_in(api, "wrong", "x").status_code)

    assert [ask("198.51.100.1") for _ in range(3)] == [400, 400, 429]
    assert ask("198.51.100.2") == 400  # another client behind the same proxy
    # What the client itself claims (the leftmost entries) is not trusted.
    assert ask("198.51.100.1", claimed="203.0.113.7") == 429


def test_a_guesser_elsewhere_never_locks_the_owner_out_and_spraying_is_stopped(
    annotator: User, admin_user: User, settings: Any
) -> None:
    settings.AXES_FAILURE_LIMIT = 3
    settings.FACTLOOP_TRUSTED_PROXIES = 1
    settings.FACTLOOP_THROTTLE_EXPENSIVE = "1000/minute"
    attacker = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.66"}
    owner = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.10"}  # the same proxy
    for _ in range(5):
        sign_in(APIClient(), "wrong", "ada", **attacker)
    assert sign_in(APIClient(), PASSWORD, "ada", **attacker).status_code == 429
    assert sign_in(APIClient(), PASSWORD, "ada", **owner).status_code == 200
    # One password over many names from one address: stopped once the address has failed enough.
    sprayer = {"REMOTE_ADDR": "10.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.99"}
    answers = [sign_in(APIClient(), "Summer2026!", f"user{n}", **sprayer).status_code for n in range(6)]
    assert answers[:2] == [400, 400] and set(answers[2:]) == {429}  # the third failure locks


def test_a_sign_in_rotates_the_token_and_a_sign_out_ends_it(annotator: User) -> None:
    first = sign_in(APIClient(), PASSWORD).json()["token"]
    second = sign_in(APIClient(), PASSWORD).json()["token"]
    assert first != second and list(Token.objects.values_list("key", flat=True)) == [second]
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {first}")
    assert api.get("/api/me/").status_code in (401, 403)  # the old one died
    api.credentials(HTTP_AUTHORIZATION=f"Token {second}")
    assert api.get("/api/me/").status_code == 200
    assert api.post("/api/auth/logout/").status_code == 204
    assert api.get("/api/me/").status_code in (401, 403) and not Token.objects.exists()
    # Signing out of the site ends the API token too.
    third = sign_in(APIClient(), PASSWORD).json()["token"]
    site = Client()
    site.force_login(annotator)
    site.post("/accounts/logout/")
    assert not Token.objects.filter(key=third).exists()


# ---------------------------------------------------------------------------------------
# Shipped placeholders

SECRET_LINE = re.compile(r"""(SECRET_KEY|POSTGRES_PASSWORD|DATABASE_URL)\s*[:=]\s*"?([^"\s#]+)""")


def shipped_secrets() -> list[tuple[str, str]]:
    found = []
    for path in sorted((REPO / "deploy").rglob("*")):
        if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".example", ".env"):
            for name, value in SECRET_LINE.findall(path.read_text(errors="replace")):
                if "${" in value or set(value) == {"."}:
                    continue  # compose asks the operator for it; "..." in a comment is no value
                if name == "DATABASE_URL":
                    password = re.match(r"\w+://[^:/@]+:([^@]+)@", value)
                    if password is None:
                        continue
                    value = password.group(1)
                found.append((f"{path.relative_to(REPO)} {name}", value))
    return found


def test_every_secret_deploy_ships_is_refused() -> None:
    secrets = shipped_secrets()
    assert len(secrets) >= 4, secrets  # .env.example's key and password, k8s' key, password and URL
    assert [where for where, value in secrets if not is_placeholder(value)] == []
