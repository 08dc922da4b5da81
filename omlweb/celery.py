import os

from celery import Celery

from omlweb import kombu_filesystem

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")
kombu_filesystem.install()

app = Celery("omlweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
