from django.apps import AppConfig


class ScriptsAppConfig(AppConfig):
    name = "scripts_app"
    verbose_name = "Scripts"
    default_auto_field = "django.db.models.BigAutoField"
