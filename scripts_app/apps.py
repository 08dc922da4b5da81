from pathlib import Path

from django.apps import AppConfig
from django.conf import settings


class ScriptsAppConfig(AppConfig):
    name = "scripts_app"
    verbose_name = "Scripts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The runner reads no settings of its own: it is told here, once per process.
        from scripts_app import audit_signals, runner  # noqa: F401 (audit_signals: its receivers)
        from scripts_app.services import notifications  # noqa: F401 - connects its run_finished receiver

        runner.configure(
            preload=settings.OMLWEB_RUNNER_PRELOAD,
            max_concurrent=settings.OMLWEB_RUNNER_MAX_CONCURRENT,
            queue_timeout=settings.OMLWEB_RUNNER_QUEUE_TIMEOUT,
            network=settings.OMLWEB_RUN_NETWORK,
            isolation=settings.OMLWEB_RUNNER_ISOLATION,
            mode=settings.OMLWEB_RUNNER_MODE,
            data_dirs_to_hide=service_data_dirs(),
            template_idle_seconds=settings.OMLWEB_RUNNER_TEMPLATE_IDLE_SECONDS,
            sandbox_tmp_bytes=settings.OMLWEB_RUNNER_TMP_MB * 1024**2,
            cgroups=settings.OMLWEB_RUNNER_CGROUPS,
        )


def service_data_dirs() -> list[str]:
    """Folders holding the service's secrets and data, which no run may see."""
    folders = [Path(settings.DATA_DIR).resolve(), Path(settings.MEDIA_ROOT).resolve()]
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        folders.append(Path(database["NAME"]).resolve().parent)
    # Each is covered with an empty tmpfs: one inside another would no longer exist to be covered.
    return sorted(
        {
            str(folder)
            for folder in folders
            if not any(folder != other and folder.is_relative_to(other) for other in folders)
        }
    )
