"""The typed environment readers: good values parse, bad ones name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from webapp.env import ConfigError, Env, parse_broker_url, parse_database_url

BASE = Path("/srv/factloop")


def test_unset_and_blank_values_take_the_default() -> None:
    env = Env({"BLANK": "   "})
    assert env.text("MISSING", "fallback") == "fallback"
    assert env.text("BLANK", "fallback") == "fallback"
    assert env.flag("BLANK", True) is True
    assert env.integer("MISSING", 7) == 7
    assert env.csv("MISSING", ["a"]) == ["a"]


def test_required_string_missing_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^SECRET_KEY: is required but not set$"):
        Env({}).text("SECRET_KEY", required=True)


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("TRUE", True), ("on", True), ("no", False), ("0", False)])
def test_booleans(raw: str, expected: bool) -> None:
    assert Env({"DEBUG": raw}).flag("DEBUG", not expected) is expected


def test_bad_boolean_names_the_variable_and_value() -> None:
    with pytest.raises(ConfigError, match=r"^DEBUG: expected a boolean .*got 'maybe'"):
        Env({"DEBUG": "maybe"}).flag("DEBUG", False)


def test_integers_and_their_bounds() -> None:
    env = Env({"N": " 42 ", "BAD": "4x", "SMALL": "3"})
    assert env.integer("N", 0) == 42
    with pytest.raises(ConfigError, match=r"^BAD: expected an integer, got '4x'"):
        env.integer("BAD", 0)
    with pytest.raises(ConfigError, match=r"^SMALL: must be at least 10, got 3"):
        env.integer("SMALL", 0, minimum=10)


def test_lists_refuse_empty_items() -> None:
    assert Env({"H": "a.example, b.example"}).csv("H", []) == ["a.example", "b.example"]
    with pytest.raises(ConfigError, match=r"^H: expected a comma-separated list"):
        Env({"H": "a,,b"}).csv("H", [])


def test_paths_are_relative_to_the_base() -> None:
    env = Env({"REL": "data/media", "ABS": "/mnt/media"})
    assert env.path("REL", Path("/x"), base=BASE) == BASE / "data/media"
    assert env.path("ABS", Path("/x"), base=BASE) == Path("/mnt/media")
    assert env.path("UNSET", Path("/x"), base=BASE) == Path("/x")


def test_choice() -> None:
    assert Env({"LOG_LEVEL": "DEBUG"}).choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO")) == "DEBUG"
    with pytest.raises(ConfigError, match=r"^LOG_LEVEL: expected one of DEBUG, INFO, got 'LOUD'"):
        Env({"LOG_LEVEL": "LOUD"}).choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO"))


# DATABASE_URL


def test_sqlite_relative_and_absolute_paths() -> None:
    relative = parse_database_url("DATABASE_URL", "sqlite:///var/db.sqlite3", base=BASE)
    assert relative["ENGINE"] == "django.db.backends.sqlite3"
    assert relative["NAME"] == str(BASE / "var/db.sqlite3")
    assert relative["TEST"]["NAME"] == str(BASE / "var/test_db.sqlite3")
    assert relative["OPTIONS"]["transaction_mode"] == "IMMEDIATE"
    absolute = parse_database_url("DATABASE_URL", "sqlite:////tmp/x.db?timeout=5", base=BASE)
    assert absolute["NAME"] == "/tmp/x.db"
    assert absolute["OPTIONS"]["timeout"] == 5


def test_postgres_url_with_credentials_and_options() -> None:
    config = parse_database_url(
        "DATABASE_URL",
        "postgres://fact%40loop:p%2Fss@db.internal:6543/factloop?conn_max_age=60&sslmode=require",
        base=BASE,
    )
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "fact@loop",
        "p/ss",
        "db.internal",
        "6543",
        "factloop",
    )
    assert config["CONN_MAX_AGE"] == 60
    assert config["CONN_HEALTH_CHECKS"] is True
    assert config["OPTIONS"] == {"sslmode": "require"}


def test_postgres_pool_option() -> None:
    config = parse_database_url("DATABASE_URL", "postgresql://u@h/db?pool=true", base=BASE)
    assert config["OPTIONS"] == {"pool": True}
    assert config["CONN_MAX_AGE"] == 0


def test_postgres_server_side_binding_option() -> None:
    url = "postgres://u@h/db?conn_max_age=60&server_side_binding=true"
    config = parse_database_url("DATABASE_URL", url, base=BASE)
    assert config["OPTIONS"] == {"server_side_binding": True} and config["CONN_MAX_AGE"] == 60
    off = parse_database_url("DATABASE_URL", "postgres://u@h/db?server_side_binding=0", base=BASE)
    assert off["OPTIONS"] == {"server_side_binding": False}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@h/db", "unsupported scheme 'mysql'"),
        ("postgres://u@h/", "must name exactly one database"),
        ("postgres://u@h:notaport/db", "port is not a number"),
        ("postgres://u@h/db?pool=maybe", "option pool='maybe' is not a boolean"),
        ("postgres://u@h/db?server_side_binding=yes please", "is not a boolean"),
        ("postgres://u@h/db?pool=1&conn_max_age=5", "cannot be combined"),
        ("postgres://u@h/db?conn_max_age=-1", "must not be negative"),
        ("sqlite://host/db", "SQLite URLs have no host"),
        ("sqlite:///", "names no file"),
        ("sqlite:///x.db?journal=wal", "unknown SQLite option"),
        ("nonsense", "unsupported scheme ''"),
    ],
)
def test_bad_database_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: ") as caught:
        parse_database_url("DATABASE_URL", url, base=BASE)
    assert message in str(caught.value)


# CELERY_BROKER_URL


def test_filesystem_broker_default_and_explicit_folder() -> None:
    default = parse_broker_url("CELERY_BROKER_URL", "filesystem://", default_folder=BASE / "var/broker")
    assert default.url == "filesystem://"
    assert default.folder == BASE / "var/broker"
    assert default.transport_options["data_folder_in"] == default.transport_options["data_folder_out"]
    explicit = parse_broker_url("CELERY_BROKER_URL", "filesystem:////data/broker", default_folder=BASE)
    assert explicit.folder == Path("/data/broker")


def test_redis_broker_keeps_long_jobs_from_being_redelivered() -> None:
    broker = parse_broker_url("CELERY_BROKER_URL", "redis://127.0.0.1:6379/3", default_folder=BASE)
    assert broker.url == "redis://127.0.0.1:6379/3"
    assert broker.folder is None
    assert broker.transport_options["visibility_timeout"] >= 6 * 3600


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("kafka://h:9092", "unsupported scheme 'kafka'"),
        ("redis://", "names no host"),
        ("redis://h:xx/0", "port is not a number"),
        ("filesystem://host/dir", "have no host"),
        ("filesystem:///relative", "must be absolute"),
    ],
)
def test_bad_broker_urls(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^CELERY_BROKER_URL: ") as caught:
        parse_broker_url("CELERY_BROKER_URL", url, default_folder=BASE)
    assert message in str(caught.value)
