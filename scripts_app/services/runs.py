"""A run's limits from the settings and its function's keyword arguments (services.execution runs it)."""

from __future__ import annotations

from django.conf import settings

from scripts_app import runner


def limits_from_settings(*, wall_seconds: float | None = None) -> runner.Limits:
    return runner.Limits(
        wall_seconds=wall_seconds or settings.OMLWEB_RUN_WALL_SECONDS,
        cpu_seconds=settings.OMLWEB_RUN_CPU_SECONDS,
        memory_bytes=settings.OMLWEB_RUN_MEMORY_MB * 1024**2,
        max_processes=settings.OMLWEB_RUN_MAX_PROCESSES,
        max_file_bytes=settings.OMLWEB_RUN_MAX_FILE_MB * 1024**2,
        max_stream_bytes=settings.OMLWEB_RUN_MAX_STREAM_KB * 1024,
        max_result_bytes=settings.OMLWEB_RUN_MAX_RESULT_MB * 1024**2,
        max_image_bytes=settings.OMLWEB_RUN_MAX_IMAGE_MB * 1024**2,
        max_output_items=settings.OMLWEB_OUTPUT_SZLIMIT,
        network=settings.OMLWEB_RUN_NETWORK,
    )


def function_kwargs(parameters: dict) -> dict:
    """The keyword arguments for the function: OML's oml_* control arguments are not passed on."""
    return {key: value for key, value in parameters.items() if not key.startswith("oml_")}
