from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("scripts_app.api.urls")),
    path("environments/", include("scripts_app.environments.urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("scripts_app.urls")),
]

handler500 = "scripts_app.views.errors.server_error"
