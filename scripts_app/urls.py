"""The pages of the web UI. The REST API is in scripts_app.api.urls."""

from django.urls import path
from django.views.generic import RedirectView

from scripts_app.views import compare, datasets, runs, schedules, scripts, status, tokens, users

app_name = "web"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="web:script_list"), name="home"),
    path("scripts/", scripts.script_list, name="script_list"),
    path("scripts/new/", scripts.script_create, name="script_create"),
    path("scripts/check/", scripts.script_check, name="script_check"),
    path("scripts/<uuid:pk>/", scripts.script_detail, name="script_detail"),
    path("scripts/<uuid:pk>/edit/", scripts.script_edit, name="script_edit"),
    path("scripts/<uuid:pk>/delete/", scripts.script_delete, name="script_delete"),
    path("scripts/<uuid:pk>/versions/", scripts.script_versions, name="script_versions"),
    path("scripts/<uuid:pk>/versions/<int:number>/", scripts.version_detail, name="version_detail"),
    path("scripts/<uuid:pk>/versions/<int:number>/restore/", scripts.version_restore, name="version_restore"),
    path("scripts/<uuid:pk>/grants/", scripts.script_grant, name="script_grant"),
    path("scripts/<uuid:pk>/grants/<int:user_id>/revoke/", scripts.script_revoke, name="script_revoke"),
    path("scripts/<uuid:pk>/global/", scripts.script_set_global, name="script_set_global"),
    path("scripts/<uuid:pk>/run/", runs.run_script, name="run_script"),
    path("runs/", runs.run_list, name="run_list"),
    path("runs/compare/", compare.run_compare, name="run_compare"),
    path("runs/<uuid:pk>/", runs.run_detail, name="run_detail"),
    path("runs/<uuid:pk>/images/<int:position>.png", runs.run_image, name="run_image"),
    path("runs/<uuid:pk>/data.<str:fmt>", runs.run_data, name="run_data"),
    path("runs/<uuid:pk>/cancel/", runs.run_cancel, name="run_cancel"),
    path("datasets/", datasets.dataset_list, name="dataset_list"),
    path("datasets/<uuid:pk>/", datasets.dataset_detail, name="dataset_detail"),
    path("datasets/<uuid:pk>/replace/", datasets.dataset_replace, name="dataset_replace"),
    path("datasets/<uuid:pk>/grants/", datasets.dataset_grant, name="dataset_grant"),
    path("datasets/<uuid:pk>/grants/<int:user_id>/revoke/", datasets.dataset_revoke, name="dataset_revoke"),
    path("datasets/<uuid:pk>/delete/", datasets.dataset_delete, name="dataset_delete"),
    path("schedules/", schedules.schedule_list, name="schedule_list"),
    path("schedules/new/", schedules.schedule_create, name="schedule_create"),
    path("schedules/preview/", schedules.schedule_preview, name="schedule_preview"),
    path("schedules/<uuid:pk>/", schedules.schedule_detail, name="schedule_detail"),
    path("schedules/<uuid:pk>/edit/", schedules.schedule_edit, name="schedule_edit"),
    path("schedules/<uuid:pk>/pause/", schedules.schedule_pause, name="schedule_pause"),
    path("schedules/<uuid:pk>/resume/", schedules.schedule_resume, name="schedule_resume"),
    path("schedules/<uuid:pk>/delete/", schedules.schedule_delete, name="schedule_delete"),
    path("tokens/", tokens.token_list, name="token_list"),
    path("tokens/<int:pk>/revoke/", tokens.token_revoke, name="token_revoke"),
    path("users/", users.user_list, name="user_list"),
    path("service/", status.service_status, name="service_status"),
    path("users/<int:pk>/", users.user_update, name="user_update"),
]
