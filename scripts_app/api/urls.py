from django.urls import path, re_path
from drf_spectacular.views import SpectacularAPIView

from scripts_app.api import audit, environments, notifications, presets, schedules, views

# v1 and v2 serve the same endpoints; v2-only ones check the version they are called under.
VERSION = r"(?P<version>v[12])"

urlpatterns = [
    path("omlusers/api/oauth2/v1/token", views.TokenView.as_view(), name="oml-token"),
    path("omlusers/api/oauth2/v1/token/revoke", views.TokenRevokeView.as_view(), name="oml-token-revoke"),
    path("oml/api/py-scripts", views.VersionCatalogView.as_view(), name="oml-versions"),
    re_path(rf"^oml/api/py-scripts/{VERSION}$", views.VersionView.as_view(), name="oml-version"),
    re_path(rf"^oml/api/py-scripts/{VERSION}/scripts$", views.ScriptListView.as_view(), name="oml-scripts"),
    # In v2, scripts/{user,all,global,grant,granted} lists scripts by type (no script has these names).
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/scripts/(?P<name>[^/]+)$",
        views.ScriptDetailView.as_view(),
        name="oml-script",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/scripts/(?P<name>[^/]+)/presets$",
        presets.PresetListView.as_view(),
        name="oml-presets",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/scripts/(?P<name>[^/]+)/presets/(?P<preset>[^/]+)$",
        presets.PresetDetailView.as_view(),
        name="oml-preset",
    ),
    re_path(rf"^oml/api/py-scripts/{VERSION}/datasets$", views.DatasetListView.as_view(), name="oml-datasets"),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/datasets/(?P<name>[^/]+)$",
        views.DatasetDetailView.as_view(),
        name="oml-dataset",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/datasets/(?P<name>[^/]+)/grants$",
        views.DatasetGrantView.as_view(),
        name="oml-dataset-grants",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/datasets/(?P<name>[^/]+)/grants/(?P<user>[^/]+)$",
        views.DatasetRevokeView.as_view(),
        name="oml-dataset-grant",
    ),
    # Each execution endpoint twice: the caller's (or a global) script, and another owner's.
    *[
        pattern
        for endpoint, view in (
            ("do-eval", views.DoEvalView),
            ("table-apply", views.TableApplyView),
            ("row-apply", views.RowApplyView),
            ("group-apply", views.GroupApplyView),
            ("index-apply", views.IndexApplyView),
        )
        for pattern in (
            re_path(
                rf"^oml/api/py-scripts/{VERSION}/{endpoint}/(?P<name>[^/]+)$", view.as_view(), name=f"oml-{endpoint}"
            ),
            re_path(
                rf"^oml/api/py-scripts/{VERSION}/{endpoint}/(?P<name>[^/]+)/(?P<owner>[^/]+)$",
                view.as_view(),
                name=f"oml-{endpoint}-owner",
            ),
        )
    ],
    re_path(rf"^oml/api/py-scripts/{VERSION}/jobs$", views.JobListView.as_view(), name="oml-jobs"),
    re_path(rf"^oml/api/py-scripts/{VERSION}/jobs/(?P<job_id>[^/]+)$", views.JobView.as_view(), name="oml-job"),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/jobs/(?P<job_id>[^/]+)/result$",
        views.JobResultView.as_view(),
        name="oml-job-result",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/jobs/(?P<job_id>[^/]+)/cancel$",
        views.JobCancelView.as_view(),
        name="oml-job-cancel",
    ),
    path("oml/api/admin/status", views.AdminStatusView.as_view(), name="oml-admin-status"),
    re_path(rf"^oml/api/py-scripts/{VERSION}/envs$", environments.EnvironmentListView.as_view(), name="oml-envs"),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/envs/(?P<name>[^/]+)$",
        environments.EnvironmentDetailView.as_view(),
        name="oml-env",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/envs/(?P<name>[^/]+)/rebuild$",
        environments.EnvironmentRebuildView.as_view(),
        name="oml-env-rebuild",
    ),
    # Oracle's conda preloads, on omlweb's environments (v2 only, as Oracle).
    path("oml/api/py-scripts/v2/preload/conda", environments.PreloadListView.as_view(), name="oml-preloads"),
    path(
        "oml/api/py-scripts/v2/preload/conda/<str:name>",
        environments.PreloadDetailView.as_view(),
        name="oml-preload",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/interpreters$",
        environments.InterpreterListView.as_view(),
        name="oml-interpreters",
    ),
    # Notifications (docs/notifications.md).
    path("oml/api/notifications/rules", notifications.RuleListView.as_view(), name="oml-notification-rules"),
    path(
        "oml/api/notifications/rules/<str:rule_id>",
        notifications.RuleDetailView.as_view(),
        name="oml-notification-rule",
    ),
    path(
        "oml/api/notifications/rules/<str:rule_id>/test",
        notifications.RuleTestView.as_view(),
        name="oml-notification-rule-test",
    ),
    path(
        "oml/api/notifications/rules/<str:rule_id>/secret",
        notifications.RuleSecretView.as_view(),
        name="oml-notification-rule-secret",
    ),
    path(
        "oml/api/notifications/deliveries",
        notifications.DeliveryListView.as_view(),
        name="oml-notification-deliveries",
    ),
    path("oml/api/audit/events", audit.AuditEventListView.as_view(), name="oml-audit-events"),
    path("oml/api/audit/events/export.<str:fmt>", audit.AuditExportView.as_view(), name="oml-audit-export"),
    path("oml/api/runs/export.<str:fmt>", audit.RunExportView.as_view(), name="oml-run-export"),
    # Schedules and retry policies (docs/schedules.md), v2 only.
    re_path(rf"^oml/api/py-scripts/{VERSION}/schedules$", schedules.ScheduleListView.as_view(), name="oml-schedules"),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/schedules/(?P<schedule_id>[^/]+)$",
        schedules.ScheduleDetailView.as_view(),
        name="oml-schedule",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/schedules/(?P<schedule_id>[^/]+)/pause$",
        schedules.SchedulePauseView.as_view(),
        name="oml-schedule-pause",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/schedules/(?P<schedule_id>[^/]+)/resume$",
        schedules.ScheduleResumeView.as_view(),
        name="oml-schedule-resume",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/schedules/(?P<schedule_id>[^/]+)/runs$",
        schedules.ScheduleRunsView.as_view(),
        name="oml-schedule-runs",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/jobs/(?P<job_id>[^/]+)/attempts$",
        schedules.JobAttemptsView.as_view(),
        name="oml-job-attempts",
    ),
    re_path(
        rf"^oml/api/py-scripts/{VERSION}/scripts/(?P<name>[^/]+)/retries$",
        schedules.ScriptRetryView.as_view(),
        name="oml-script-retries",
    ),
    path("oml/api/schema", SpectacularAPIView.as_view(), name="oml-schema"),
]
