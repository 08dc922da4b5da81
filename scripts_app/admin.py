from django.contrib import admin
from django.contrib.auth.admin import GroupAdmin
from django.contrib.auth.models import Group
from django.db import transaction

from scripts_app.models import (
    AccessToken,
    AuditEvent,
    Dataset,
    DatasetGrant,
    Environment,
    GroupLimits,
    Run,
    RunImage,
    Script,
    ScriptGrant,
    ScriptRetryPolicy,
    ScriptVersion,
)
from scripts_app.services import datasets, shares


class ScriptVersionInline(admin.TabularInline):
    model = ScriptVersion
    fields = ("number", "entry_function", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


class ScriptGrantInline(admin.TabularInline):
    model = ScriptGrant
    extra = 0
    autocomplete_fields = ("grantee",)


@admin.register(Script)
class ScriptAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "is_global", "current_version", "updated_at")
    list_filter = ("is_global",)
    search_fields = ("name", "description", "owner__username")
    readonly_fields = ("current_version", "created_at", "updated_at")
    inlines = (ScriptVersionInline, ScriptGrantInline)


@admin.register(ScriptVersion)
class ScriptVersionAdmin(admin.ModelAdmin):
    list_display = ("script", "number", "entry_function", "created_by", "created_at")
    search_fields = ("script__name",)
    readonly_fields = ("script", "number", "source", "entry_function", "created_by", "created_at")

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # versions are immutable


class RunImageInline(admin.TabularInline):
    model = RunImage
    extra = 0
    readonly_fields = ("position", "title", "image")
    can_delete = False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("script_name", "script_owner", "user", "status", "mode", "service", "env_name", "created_at")
    list_filter = ("status", "mode", "service", "env_name")
    search_fields = ("script_name", "user__username", "id")
    date_hierarchy = "created_at"
    list_select_related = ("user",)
    readonly_fields = [field.name for field in Run._meta.fields]
    inlines = (RunImageInline,)

    # Deleted as the services delete runs: what they kept comes off their users' storage counters.
    def delete_model(self, request, obj) -> None:
        self.delete_queryset(request, Run.objects.filter(pk=obj.pk))

    @transaction.atomic
    def delete_queryset(self, request, queryset) -> None:
        shares.delete_runs(Run.objects.filter(pk__in=list(queryset.values_list("pk", flat=True))))


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    list_display = ("user", "kind", "name", "created_at", "expires_at", "revoked_at", "last_used_at")
    list_filter = ("kind",)
    search_fields = ("user__username", "name")
    readonly_fields = ("token_hash", "created_at", "chain_started_at", "last_used_at")


class DatasetGrantInline(admin.TabularInline):
    model = DatasetGrant
    extra = 0
    autocomplete_fields = ("grantee",)


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "is_global", "row_count", "column_count", "size_bytes", "updated_at")
    list_filter = ("is_global", "source_format")
    search_fields = ("name", "description", "owner__username")
    readonly_fields = (
        "file",
        "source_format",
        "size_bytes",
        "row_count",
        "column_count",
        "schema",
        "created_at",
        "updated_at",
    )
    inlines = (DatasetGrantInline,)

    def get_readonly_fields(self, request, obj=None):
        # Its size counts against its owner's quota, and its file lives in the owner's folder.
        return (*self.readonly_fields, "owner") if obj is not None else self.readonly_fields

    # Deleted as the services delete datasets: audited, its size off its owner's storage counter.
    def delete_model(self, request, obj) -> None:
        datasets.dataset_delete(dataset=obj)

    def delete_queryset(self, request, queryset) -> None:
        for dataset in queryset:
            datasets.dataset_delete(dataset=dataset)


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    """Read-only here: environments are built through their own pages and API, which queue the build."""

    list_display = ("name", "status", "python_version", "package_count", "generation", "build_finished_at")
    list_filter = ("status",)
    search_fields = ("name", "description", "packages")
    readonly_fields = [field.name for field in Environment._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class GroupLimitsInline(admin.StackedInline):
    model = GroupLimits
    # One blank form (empty fields keep the settings), so it shows without JavaScript.
    extra = 1
    max_num = 1


# A group's limits are edited on the group's own page, where an admin looks for them.
admin.site.unregister(Group)


@admin.register(Group)
class GroupWithLimitsAdmin(GroupAdmin):
    inlines = (GroupLimitsInline,)


@admin.register(GroupLimits)
class GroupLimitsAdmin(admin.ModelAdmin):
    list_display = ("group", "max_sync_runs", "max_running_jobs", "max_queued_jobs", "quota_mb")
    autocomplete_fields = ("group",)


@admin.register(ScriptRetryPolicy)
class ScriptRetryPolicyAdmin(admin.ModelAdmin):
    list_display = ("script", "max_retries", "retry_backoff_seconds", "retry_backoff_factor", "retry_user_errors")
    autocomplete_fields = ("script",)


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Read-only: the trail is appended by services.audit and pruned only by manage.py audit_prune."""

    list_display = ("id", "created_at", "actor_name", "action", "object_type", "object_name", "client_address")
    list_filter = ("action", "object_type")
    search_fields = ("actor_name", "object_name", "object_id")
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
