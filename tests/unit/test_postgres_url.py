"""A PostgreSQL store URL becomes one libpq connection string and the
eventsourcing settings that agree with it (service/storage/postgres_url.py)."""

from __future__ import annotations

import pytest
from psycopg.conninfo import conninfo_to_dict

from service.storage.postgres_url import postgres_settings

# Each character that a URL must percent-encode, or that a hand-built
# conninfo string would break on.
PASSWORDS = {
    "p%20ss": "p ss",
    "p%40ss": "p@ss",
    "p%2Fss": "p/ss",
    "p%25ss": "p%ss",
    "it%27s%20a%5Cb%3Dc": "it's a\\b=c",
}


@pytest.mark.parametrize(("encoded", "password"), PASSWORDS.items())
def test_the_conninfo_and_the_settings_carry_the_exact_password(
    encoded: str, password: str
) -> None:
    settings = postgres_settings(f"postgresql://u:{encoded}@db.example:6543/sessions")
    assert conninfo_to_dict(settings.conninfo)["password"] == password
    assert settings.env["POSTGRES_PASSWORD"] == password


def test_the_conninfo_names_the_same_database_as_the_settings() -> None:
    settings = postgres_settings("postgres://u:pw@db.example:6543/my%20db")
    params = conninfo_to_dict(settings.conninfo)
    assert params == {
        "host": "db.example",
        "port": "6543",
        "dbname": "my db",
        "user": "u",
        "password": "pw",
        "connect_timeout": "2",
        "keepalives_idle": "2",
        "keepalives_interval": "1",
        "keepalives_count": "2",
        "tcp_user_timeout": "4000",
        "options": "-c statement_timeout=3000",
    }
    env = settings.env
    assert (env["POSTGRES_HOST"], env["POSTGRES_PORT"]) == ("db.example", "6543")
    assert (env["POSTGRES_DBNAME"], env["POSTGRES_USER"]) == ("my db", "u")
    assert env["POSTGRES_CONNINFO"] == settings.conninfo


def test_libpq_options_pass_through_and_sessionds_own_stay_out_of_the_conninfo() -> None:
    settings = postgres_settings(
        "postgresql://u@h/db?sslmode=disable&application_name=node%201"
        "&options=-c%20statement_timeout%3D5000&pool_size=7&max_overflow=3"
        "&lock_timeout=9&schema=s1&connect_timeout=4"
    )
    params = conninfo_to_dict(settings.conninfo)
    assert params["sslmode"] == "disable"
    assert params["application_name"] == "node 1"
    assert params["options"] == "-c statement_timeout=5000"
    assert params["connect_timeout"] == "4"
    assert not {"pool_size", "max_overflow", "lock_timeout", "statement_timeout", "schema"} & set(
        params
    )
    env = settings.env
    assert env["POSTGRES_CONNECT_TIMEOUT"] == "4"
    assert (env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"]) == ("7", "3")
    assert (env["POSTGRES_LOCK_TIMEOUT"], env["POSTGRES_SCHEMA"]) == ("9", "s1")


def test_sessionds_defaults_hold_when_the_url_sets_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PGUSER", raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    settings = postgres_settings("postgresql://h/db")
    params = conninfo_to_dict(settings.conninfo)
    assert (params["user"], params["port"], params["connect_timeout"]) == ("postgres", "5432", "2")
    assert "password" not in params
    env = settings.env
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"]) == ("postgres", "")
    assert (env["POSTGRES_POOL_SIZE"], env["POSTGRES_MAX_OVERFLOW"]) == ("5", "10")
    assert env["POSTGRES_LOCK_TIMEOUT"] == "2"
    assert "POSTGRES_SCHEMA" not in env


def test_every_connection_has_deadlines_unless_the_url_sets_its_own() -> None:
    params = conninfo_to_dict(postgres_settings("postgresql://h/db").conninfo)
    assert params["connect_timeout"] == "2"
    assert params["options"] == "-c statement_timeout=3000"
    assert (params["keepalives_idle"], params["keepalives_interval"]) == ("2", "1")
    assert (params["keepalives_count"], params["tcp_user_timeout"]) == ("2", "4000")
    own = conninfo_to_dict(
        postgres_settings(
            "postgresql://h/db?statement_timeout=0.5&connect_timeout=7&keepalives_idle=30"
            "&options=-c%20search_path%3Dx"
        ).conninfo
    )
    assert own["options"] == "-c statement_timeout=500 -c search_path=x"
    assert (own["connect_timeout"], own["keepalives_idle"]) == ("7", "30")
    off = conninfo_to_dict(postgres_settings("postgresql://h/db?statement_timeout=0").conninfo)
    assert "options" not in off


def test_a_statement_timeout_that_is_not_a_number_is_a_bad_url() -> None:
    with pytest.raises(ValueError, match="statement_timeout is seconds"):
        postgres_settings("postgresql://h/db?statement_timeout=soon")


def test_user_and_password_fall_back_to_the_libpq_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGUSER", "from-env")
    monkeypatch.setenv("PGPASSWORD", "env secret")
    settings = postgres_settings("postgresql://h/db")
    params = conninfo_to_dict(settings.conninfo)
    assert (params["user"], params["password"]) == ("from-env", "env secret")
    assert (settings.env["POSTGRES_USER"], settings.env["POSTGRES_PASSWORD"]) == (
        "from-env",
        "env secret",
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql://host-only", "expected postgresql://"),
        ("postgresql:///db-without-host", "expected postgresql://"),
        ("postgresql://u@h:notaport/db", "port is not a number"),
        ("postgresql://u@h/db?no_such_option=1", "no_such_option"),
    ],
)
def test_a_url_libpq_or_sessiond_cannot_use_is_refused(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        postgres_settings(url)
