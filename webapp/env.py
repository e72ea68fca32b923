"""Small typed readers of configuration values.

`webapp/settings.py` is the only module that touches the process environment: it hands
`os.environ` to an `Env` and asks it for typed values. Everything here takes the mapping
as an argument, so the parsing is tested without touching the real environment.

Every error names the variable it is about, so a bad deployment fails at start-up with a
message a person can act on, never later with a confusing traceback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

# The example secrets that deploy/ ships (and DEBUG's key): public, so never a production
# value. tests/webapp/test_env.py reads every secret in deploy/ and checks it is refused.
PLACEHOLDER_PREFIXES = ("change-me", "changeme", "replace-me", "replace-with", "factloop-insecure")
PLACEHOLDER_WORDS = frozenset({"secret", "password", "postgres", "factloop"})


def is_placeholder(value: str) -> bool:
    lowered = value.strip().lower()
    return lowered in PLACEHOLDER_WORDS or lowered.startswith(PLACEHOLDER_PREFIXES)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(ImproperlyConfigured):
    """A setting is missing or malformed. The message starts with the variable's name."""

    def __init__(self, name: str, problem: str) -> None:
        self.name = name
        super().__init__(f"{name}: {problem}")


@dataclass(frozen=True)
class Env:
    """Typed access to an environment mapping; an unset or blank value means "default"."""

    environ: Mapping[str, str]

    def _raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        value = self._raw(name)
        if value is None:
            if required or default is None:
                raise ConfigError(name, "is required but not set")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ConfigError(name, f"expected a boolean (1/0, true/false, yes/no, on/off), got {value!r}")

    def _bounded(self, name: str, default: Any, convert: Any, what: str, minimum: Any, maximum: Any) -> Any:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = convert(value)
        except ValueError:
            raise ConfigError(name, f"expected {what}, got {value!r}") from None
        if minimum is not None and number < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {number}")
        if maximum is not None and number > maximum:
            raise ConfigError(name, f"must be at most {maximum}, got {number}")
        return number

    def integer(self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
        return int(self._bounded(name, default, int, "an integer", minimum, maximum))

    def number(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        return float(self._bounded(name, default, float, "a number", minimum, maximum))

    def fraction(self, name: str, default: float) -> float:
        """A number from 0 to 1."""
        return self.number(name, default, minimum=0, maximum=1)

    def csv(self, name: str, default: list[str]) -> list[str]:
        value = self._raw(name)
        if value is None:
            return list(default)
        items = [item.strip() for item in value.split(",")]
        if any(item == "" for item in items):
            raise ConfigError(name, f"expected a comma-separated list without empty items, got {value!r}")
        return items

    def path(self, name: str, default: Path, *, base: Path) -> Path:
        """A directory or file path; a relative value is taken relative to `base`."""
        value = self._raw(name)
        if value is None:
            return default
        path = Path(value).expanduser()
        if "\x00" in value:
            raise ConfigError(name, "contains a NUL byte")
        return path if path.is_absolute() else (base / path)

    def rate(self, name: str, default: str) -> str:
        """A request rate, "N/second", "N/minute", "N/hour" or "N/day" (DRF's throttle rates)."""
        value = self._raw(name) or default
        count, _, period = value.partition("/")
        if not count.isdigit() or int(count) < 1 or period not in ("second", "minute", "hour", "day"):
            raise ConfigError(name, f"expected N/second, N/minute, N/hour or N/day with N at least 1, got {value!r}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value


# ---------------------------------------------------------------------------------------
# DATABASE_URL

_POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql"}


def _query_options(name: str, query: str) -> dict[str, str]:
    try:
        return dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(name, f"malformed query string {query!r}") from None


def _bool_option(name: str, key: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE - {""}:
        return False
    raise ConfigError(name, f"option {key}={value!r} is not a boolean")


def _int_option(name: str, key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(name, f"option {key}={value!r} is not an integer") from None
    if number < 0:
        raise ConfigError(name, f"option {key} must not be negative")
    return number


def parse_database_url(name: str, url: str, *, base: Path) -> dict[str, Any]:
    """Turn `sqlite:///PATH` or `postgres://USER:PASS@HOST:PORT/NAME?opts` into DATABASES['default'].

    dj-database-url reads the URL (scheme, credentials, host, port, name, libpq options);
    this adds FactLoop's rules around it, each refusal naming the variable:

    SQLite: a relative PATH is relative to `base` (`sqlite:///var/db.sqlite3`), an absolute
    one has four slashes (`sqlite:////srv/db.sqlite3`). The connection takes the write lock
    at BEGIN (`transaction_mode=IMMEDIATE`, Django 5.1+) and runs in WAL mode, so the web
    app and worker processes wait for each other instead of failing with "database is
    locked" halfway through a transaction. Option: `timeout` (seconds).

    PostgreSQL options: `conn_max_age` (seconds, persistent connections), `pool` (true to use
    psycopg's connection pool, Django 5.1+; excludes conn_max_age), `server_side_binding`,
    and any libpq option such as `sslmode`, passed through.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    options = _query_options(name, parts.query)
    if scheme not in {"sqlite", *_POSTGRES_SCHEMES}:
        raise ConfigError(
            name, f"unsupported scheme {parts.scheme!r}: use sqlite:///PATH or postgres://USER@HOST:PORT/NAME"
        )
    if scheme == "sqlite":
        if parts.netloc:
            raise ConfigError(
                name, "SQLite URLs have no host: write sqlite:///relative/path or sqlite:////absolute/path"
            )
        if unquote(parts.path) in ("", "/"):
            raise ConfigError(name, "SQLite URL names no file")
        timeout = _int_option(name, "timeout", options.pop("timeout", "20"))
        if options:
            raise ConfigError(name, f"unknown SQLite option(s): {', '.join(sorted(options))}")
    else:
        try:
            _ = parts.port  # urlsplit reads the port only when asked
        except ValueError:
            raise ConfigError(name, "port is not a number") from None
        pool = _bool_option(name, "pool", options.pop("pool")) if "pool" in options else False
        conn_max_age = _int_option(name, "conn_max_age", options.pop("conn_max_age", "0"))
        binding = options.pop("server_side_binding", None)
        if pool and conn_max_age:
            raise ConfigError(
                name, "pool=true and conn_max_age cannot be combined (Django refuses persistent pooled connections)"
            )
    try:
        # FactLoop's own options are read above; the rest are the driver's.
        bare = f"sqlite://{parts.path}" if scheme == "sqlite" else urlunsplit(parts._replace(query=urlencode(options)))
        config: dict[str, Any] = dict(dj_database_url.parse(bare))
    except ValueError as error:  # dj-database-url's ParseError and UnknownSchemeError
        raise ConfigError(name, str(error)) from None
    config.pop("DISABLE_SERVER_SIDE_CURSORS", None)
    if scheme == "sqlite":
        path = Path(config["NAME"])
        path = path if path.is_absolute() else base / path
        return {
            "ENGINE": config["ENGINE"],
            "NAME": str(path),
            "OPTIONS": {
                "timeout": timeout,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
            # A file, not ":memory:", so that worker processes started by tests see it too.
            "TEST": {"NAME": str(path.with_name(f"test_{path.name}"))},
        }
    if not config["NAME"] or "/" in config["NAME"]:
        raise ConfigError(name, "PostgreSQL URL must name exactly one database: postgres://USER@HOST:PORT/NAME")
    config["PORT"] = str(config["PORT"] or "")
    config["OPTIONS"] = dict(config.get("OPTIONS", {}))
    if pool:
        config["OPTIONS"]["pool"] = True
    if binding is not None:
        # psycopg binds parameters on the server and prepares statements it sees often,
        # so PostgreSQL plans each hot query once per connection instead of every time.
        config["OPTIONS"]["server_side_binding"] = _bool_option(name, "server_side_binding", binding)
    config["CONN_MAX_AGE"] = conn_max_age
    config["CONN_HEALTH_CHECKS"] = conn_max_age > 0
    return config


# ---------------------------------------------------------------------------------------
# CELERY_BROKER_URL


@dataclass(frozen=True)
class Broker:
    url: str
    transport_options: dict[str, Any]
    # The folder of the embedded broker, None for a networked one.
    folder: Path | None


def parse_broker_url(name: str, url: str, *, default_folder: Path) -> Broker:
    """`filesystem://` (the embedded broker, a folder), `filesystem:////abs/dir`, or a
    networked broker (`redis://`, `rediss://`, `amqp://`).

    The filesystem transport needs no server: the web app and the worker exchange messages
    as files in one folder. It suits one machine and the zero-setup demo; production uses
    Redis.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "filesystem":
        if parts.netloc:
            raise ConfigError(
                name, "filesystem broker URLs have no host: write filesystem:// or filesystem:////abs/dir"
            )
        raw = unquote(parts.path)
        folder = Path(raw[1:]) if raw.startswith("//") else default_folder
        if raw not in ("", "/") and not raw.startswith("//"):
            raise ConfigError(name, "the folder of a filesystem broker must be absolute: filesystem:////abs/dir")
        queue_folder = folder / "queue"
        return Broker(
            url="filesystem://",
            transport_options={
                # One folder both ways: producer and consumer share it on this machine.
                "data_folder_in": str(queue_folder),
                "data_folder_out": str(queue_folder),
                "control_folder": str(folder / "control"),
                "store_processed": False,
            },
            folder=folder,
        )
    if scheme in {"redis", "rediss", "amqp", "amqps", "pyamqp"}:
        if not parts.hostname:
            raise ConfigError(name, f"{scheme} URL names no host")
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigError(name, "port is not a number") from None
        options: dict[str, Any] = {}
        if scheme.startswith("redis"):
            # Redis re-delivers an unacknowledged task after this many seconds. Training
            # tasks run for hours and are acknowledged late (on completion), so the default
            # hour would hand a still-running training job to a second worker.
            options["visibility_timeout"] = 12 * 3600
        return Broker(url=url, transport_options=options, folder=None)
    raise ConfigError(name, f"unsupported scheme {parts.scheme!r}: use filesystem://, redis://HOST:PORT/DB or amqp://")
