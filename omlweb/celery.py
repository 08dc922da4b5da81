import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")

app = Celery("omlweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
