from django.urls import path

from scripts_app.environments import views

app_name = "environments"

urlpatterns = [
    path("", views.environment_list, name="list"),
    path("<str:name>/", views.environment_detail, name="detail"),
    path("<str:name>/rebuild", views.environment_rebuild, name="rebuild"),
    path("<str:name>/delete", views.environment_delete, name="delete"),
]
