import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "omlweb.settings")

django_application = get_wsgi_application()

from scripts_app.api.middleware import ChunkedBodies  # noqa: E402 - needs the settings loaded above

application = ChunkedBodies(django_application)
