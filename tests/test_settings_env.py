"""Settings read from the environment: typed, with defaults that need nothing, failing loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from omlweb.env import database, env_bool, env_date, env_int, secret_key


def test_default_database_is_sqlite_in_the_data_dir(tmp_path):
    """No DATABASE_URL: SQLite in the data dir, in WAL mode with a busy timeout."""
    config = database("", tmp_path)
    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == str(tmp_path / "omlweb.sqlite3")
    assert "journal_mode=WAL" in config["OPTIONS"]["init_command"]
    assert config["OPTIONS"]["timeout"] == 20


def test_sqlite_urls(tmp_path):
    """sqlite:///relative and sqlite:////absolute, as SQLAlchemy writes them."""
    assert database("sqlite:///db/x.sqlite3", tmp_path)["NAME"] == "db/x.sqlite3"
    assert database("sqlite:////srv/x.sqlite3", tmp_path)["NAME"] == "/srv/x.sqlite3"


def test_postgres_url(tmp_path):
    """postgres:// URLs give Django's PostgreSQL backend, with quoted parts decoded."""
    config = database("postgres://oml:p%40ss@db.example:5433/omlweb", tmp_path)
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"], config["HOST"], config["PORT"], config["NAME"]) == (
        "oml",
        "p@ss",
        "db.example",
        "5433",
        "omlweb",
    )


def test_unknown_database_scheme_fails_loudly(tmp_path):
    """An unsupported scheme stops start-up with a clear message."""
    with pytest.raises(ImproperlyConfigured, match="mysql"):
        database("mysql://x/y", tmp_path)


def test_bool_and_int_fail_loudly(monkeypatch):
    """A value that is not a boolean or a number stops start-up, naming the variable."""
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG"):
        env_bool("X_FLAG", False)
    monkeypatch.setenv("X_FLAG", "yes")
    assert env_bool("X_FLAG", False) is True
    monkeypatch.setenv("X_NUMBER", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_NUMBER"):
        env_int("X_NUMBER", 1)
    monkeypatch.setenv("X_NUMBER", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        env_int("X_NUMBER", 5, minimum=1)


def test_secret_key_generated_once_and_kept_private(tmp_path, monkeypatch):
    """Without DJANGO_SECRET_KEY a key is generated once, kept with mode 0600, and reused."""
    monkeypatch.delenv("DJANGO_SECRET_KEY", raising=False)
    first = secret_key(tmp_path)
    assert len(first) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
    assert secret_key(tmp_path) == first
    monkeypatch.setenv("DJANGO_SECRET_KEY", "from-the-environment")
    assert secret_key(tmp_path) == "from-the-environment"


def test_no_secret_key_in_the_repository():
    """The repository holds no secret key."""
    root = Path(__file__).resolve().parent.parent
    settings_text = (root / "omlweb" / "settings.py").read_text()
    assert "SECRET_KEY = secret_key(" in settings_text
    assert not (root / "secret_key").exists()


def test_dates_are_iso_or_empty(monkeypatch):
    """OMLWEB_V1_SUNSET_DATE: an ISO date, empty for none; anything else fails at start-up."""
    import datetime

    assert env_date("OMLWEB_V1_SUNSET_DATE", "2026-03-31") == datetime.date(2026, 3, 31)
    monkeypatch.setenv("OMLWEB_V1_SUNSET_DATE", "")
    assert env_date("OMLWEB_V1_SUNSET_DATE", "2026-03-31") is None
    monkeypatch.setenv("OMLWEB_V1_SUNSET_DATE", "31/03/2026")
    with pytest.raises(ImproperlyConfigured, match="not a date"):
        env_date("OMLWEB_V1_SUNSET_DATE", "2026-03-31")


def test_gunicorn_keeps_idle_connections_well_above_a_poll_interval(monkeypatch):
    """gunicorn's config: 75 s keep-alive (its own default, 2 s, equals dbt-oracle's poll interval), threads."""
    import importlib

    import omlweb.gunicorn_conf as conf

    assert importlib.reload(conf).keepalive == 75
    assert conf.worker_class == "gthread"
    monkeypatch.setenv("OMLWEB_WEB_KEEPALIVE_SECONDS", "120")
    assert importlib.reload(conf).keepalive == 120
    monkeypatch.setenv("OMLWEB_WEB_KEEPALIVE_SECONDS", "0")
    with pytest.raises(ImproperlyConfigured):
        importlib.reload(conf)
    monkeypatch.delenv("OMLWEB_WEB_KEEPALIVE_SECONDS")
    importlib.reload(conf)


def test_by_default_a_ten_minute_sync_model_fits_and_cpu_follows_the_wall_clock():
    """OMLWEB_RUN_WALL_SECONDS defaults above 10 minutes; the CPU limit follows it unless set apart."""
    import os
    import subprocess
    import sys

    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'omlweb.settings'; django.setup();"
        "from django.conf import settings as s; print(s.OMLWEB_RUN_WALL_SECONDS, s.OMLWEB_RUN_CPU_SECONDS)"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMLWEB_RUN_WALL_SECONDS", "OMLWEB_RUN_CPU_SECONDS")}
    wall, cpu = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert float(wall) >= 600
    assert int(cpu) == int(float(wall))
    env["OMLWEB_RUN_WALL_SECONDS"] = "1200"
    wall, cpu = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert (float(wall), int(cpu)) == (1200.0, 1200)


def test_media_folder_is_in_the_data_dir_unless_named_and_runs_never_see_it(tmp_path, settings, monkeypatch):
    """OMLWEB_MEDIA_DIR puts run images and datasets on a shared mount; either way runs see no media."""
    import os
    import subprocess
    import sys

    from scripts_app.apps import service_data_dirs

    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'omlweb.settings'; django.setup();"
        "from django.conf import settings as s; print(s.DATA_DIR, s.MEDIA_ROOT)"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMLWEB_MEDIA_DIR"}
    env["OMLWEB_DATA_DIR"] = str(tmp_path / "data")
    data, media = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert Path(media) == Path(data) / "media"
    env["OMLWEB_MEDIA_DIR"] = str(tmp_path / "shared" / "media")
    _, media = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.split()
    assert Path(media) == (tmp_path / "shared" / "media").resolve()

    # Each hidden folder is covered by an empty tmpfs: media inside the data dir is covered with it,
    # media elsewhere (a shared mount) is covered on its own.
    settings.DATA_DIR = tmp_path / "data"
    monkeypatch.setitem(settings.DATABASES["default"], "ENGINE", "django.db.backends.postgresql")  # no SQLite folder
    settings.MEDIA_ROOT = tmp_path / "data" / "media"
    assert service_data_dirs() == [str((tmp_path / "data").resolve())]
    settings.MEDIA_ROOT = tmp_path / "shared" / "media"
    assert service_data_dirs() == sorted([str((tmp_path / "data").resolve()), str(media)])
