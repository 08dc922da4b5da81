"""Typed readers for settings from environment variables. A bad value fails loudly at start-up."""

from __future__ import annotations

import datetime
import os
import secrets
from pathlib import Path
from urllib.parse import unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from omlweb import sqlite_checkpoint

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    if value.strip().lower() in TRUE_WORDS:
        return True
    if value.strip().lower() in FALSE_WORDS:
        return False
    raise ImproperlyConfigured(f"{name}={value!r}: use true or false")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: not a whole number") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name}={value!r}: must be at least {minimum}")
    return number


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: not a number") from None


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def secret_key(data_dir: Path) -> str:
    """DJANGO_SECRET_KEY, or one generated on first start and kept (mode 0600) in the data dir."""
    if key := os.environ.get("DJANGO_SECRET_KEY"):
        return key
    path = data_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(50)
    # O_EXCL: when two processes start at once, one writes and the other reads its key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as file:
        file.write(key)
    return key


def database(url: str, data_dir: Path) -> dict:
    """Django's DATABASES entry for a URL: sqlite:///path or postgres://user:pass@host:port/name."""
    if not url:
        return sqlite_database(data_dir / "omlweb.sqlite3")
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        # sqlite:///relative/path and sqlite:////absolute/path, as SQLAlchemy writes them.
        return sqlite_database(Path(path[1:]))
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": unquote(parts.path.lstrip("/")),
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(parts.port or ""),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
            # A server that does not answer (a dropped route, not a refused port) fails a request in
            # seconds with a 503, instead of holding it, and the supervisor's loop, for minutes.
            "OPTIONS": {"connect_timeout": 5},
        }
    raise ImproperlyConfigured(f"DATABASE_URL scheme {parts.scheme!r} is not supported: use sqlite or postgres")


def sqlite_database(path: Path) -> dict:
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(path),
        # Kept open between requests, as PostgreSQL's: a new SQLite connection (its PRAGMAs, the schema
        # parsed again) cost every sync run about 1.5 ms. Each gunicorn thread has its own; Celery's
        # fix-up drops what a forked worker inherited; threads that open one close it when they end.
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
        # WAL and a busy timeout so the web process and the workers don't trip over "database is locked".
        # A commit checkpoints the WAL itself only past the backstop: a web process's own thread does it
        # after the answers that stored large values (omlweb/sqlite_checkpoint.py).
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": (
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; "
                f"PRAGMA wal_autocheckpoint={sqlite_checkpoint.BACKSTOP_PAGES};"
            ),
        },
        "TEST": {"NAME": str(path.with_name("test_" + path.name))},
    }


# Longest async run (Oracle's maximum timeout) plus a margin: Redis must not hand a running job's
# message to a second worker while the first still runs it.
REDIS_VISIBILITY_TIMEOUT = 2 * 43200


def broker_transport_options(url: str, data_dir: Path) -> dict:
    """Celery's broker_transport_options for a broker URL: the embedded broker's folders, Redis's timeout."""
    scheme = urlsplit(url).scheme
    if scheme == "filesystem":
        # The embedded broker: one file per message in the data dir, no server to run. Unlike the SQL
        # transport it supports fanout, so remote control (inspect, ping) works.
        broker = data_dir / "broker"
        for folder in ("queue", "processed", "control"):
            (broker / folder).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(broker / "queue"),
            "data_folder_out": str(broker / "queue"),
            "processed_folder": str(broker / "processed"),
            "store_processed": False,
            "control_folder": str(broker / "control"),
            "polling_interval": 0.1,
        }
    if scheme in {"redis", "rediss"}:
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT}
    return {}


def env_date(name: str, default: str) -> datetime.date | None:
    """An ISO date (2026-03-31); empty means none."""
    value = os.environ.get(name, default).strip()
    if not value:
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={value!r}: not a date (YYYY-MM-DD)") from None
