"""Endpoints of the OML4Py REST API and omlweb's script management."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.contrib.auth.signals import user_logged_in
from django.db import transaction
from django.http import HttpResponseBase
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from scripts_app import roles
from scripts_app.api import wire
from scripts_app.api.parsers import StrictJSONParser
from scripts_app.api.schema import (
    ANY_RESULT,
    DATASET_LIST,
    DATASET_ONE,
    DATASET_PREVIEW,
    JOB_ACCEPTED,
    JOB_LIST,
    JOB_LOCATION,
    JOB_RESULT,
    SCRIPT_LIST,
    SCRIPT_ONE,
    VERSION_CATALOG,
    VersionSerializer,
    message,
)
from scripts_app.api.serializers import (
    DatasetRowSerializer,
    DatasetWriteSerializer,
    ExecutionRequestSerializer,
    GrantSerializer,
    GroupApplyRequestSerializer,
    IndexApplyRequestSerializer,
    JobStatusSerializer,
    RowApplyRequestSerializer,
    ScriptRowSerializer,
    ScriptWriteSerializer,
    TableApplyRequestSerializer,
    TokenRequestSerializer,
    TokenResponseSerializer,
)
from scripts_app.errors import BadRequest, ErrorCode, NotAuthenticated, NotFound, PermissionDenied
from scripts_app.models import AccessToken, Run
from scripts_app.services import datasets, pipeline, scripts, tokens
from scripts_app.services.jobs import broker, submission


def client_address(request: Request) -> str | None:
    return request.META.get("REMOTE_ADDR") or None


# Tokens


class TokenView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=TokenRequestSerializer,
        responses={200: TokenResponseSerializer},
        summary="Get an OML token with a password, or refresh one",
        operation_id="token",
    )
    def post(self, request: Request) -> Response:
        body = TokenRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if data["grant_type"] == "password":
            if not data.get("username") or "password" not in data:
                raise BadRequest("grant_type password needs username and password.")
            user = authenticate(request._request, username=data["username"], password=data["password"])
            if user is None:
                raise NotAuthenticated("Invalid username or password.", code=ErrorCode.BAD_CREDENTIALS)
            # A sign-in like the login page's: django-axes forgets the earlier failures, last_login is set.
            user_logged_in.send(sender=type(user), request=request._request, user=user)
            raw, token = tokens.token_issue(user=user)
        else:
            raw_old = data.get("refresh_token") or data.get("token") or _bearer(request)
            if not raw_old:
                raise BadRequest("grant_type refresh_token needs the token in refresh_token or token.")
            raw, token = tokens.token_refresh(raw=raw_old)
        return Response(_token_body(raw, token))


class TokenRevokeView(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(
        request=inline_serializer("TokenRevokeRequest", fields={"token": serializers.CharField(required=False)}),
        responses={200: message("TokenRevoked")},
        summary="Revoke a token",
        operation_id="tokenRevoke",
    )
    def post(self, request: Request) -> Response:
        """Revoke the token in the Authorization header (or in `token` in the body)."""
        body = request.data if isinstance(request.data, dict) else {}
        raw = _bearer(request) or body.get("token")
        if not isinstance(raw, str) or not raw:
            raise NotAuthenticated("Send the token to revoke as 'Authorization: Bearer <token>'.")
        token = AccessToken.objects.filter(token_hash=tokens.token_hash(raw)).first()
        if token is None:
            raise NotAuthenticated("Invalid token.")
        tokens.token_revoke(token=token)
        return Response({"result": "token revoked"})


def _bearer(request: Request) -> str | None:
    parts = request.META.get("HTTP_AUTHORIZATION", "").split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


def _token_body(raw: str, token: AccessToken) -> dict:
    assert token.expires_at is not None, "an OML token always expires"
    expires_in = int((token.expires_at - token.created_at).total_seconds())
    return {"accessToken": raw, "expiresIn": expires_in, "tokenType": "Bearer"}


# Running scripts


class DoEvalView(APIView):
    @extend_schema(
        request=ExecutionRequestSerializer,
        responses={200: ANY_RESULT, 201: JOB_ACCEPTED},
        parameters=[JOB_LOCATION],
        summary="Run a script's function with no input data (OML do-eval)",
    )
    def post(self, request: Request, version: str, name: str, owner: str | None = None) -> HttpResponseBase:
        return execute(request, version, name, owner, ExecutionRequestSerializer, Run.Kind.DO_EVAL)


def execute(
    request: Request,
    version: str,
    name: str,
    owner: str | None,
    serializer_class: type[ExecutionRequestSerializer],
    kind: str,
) -> HttpResponseBase:
    """What every execution endpoint does: check the body, then start the run (services.pipeline) and
    answer its result, or the job's Location."""
    body = serializer_class(data=request.data)
    body.is_valid(raise_exception=True)
    script = scripts.script_resolve(caller=request.user, name=name, owner_name=owner)
    run_request = body.run_request(kind=kind, script=script, user=request.user, client_address=client_address(request))
    run = pipeline.start_run(run_request)
    if not run_request.asynchronous:
        return wire.oml_result_response(run)
    # Oracle: 201, no body, and the job's absolute URL in Location, which clients poll as it is.
    return Response(status=201, headers={"Location": job_url(request, version, run)})


def job_url(request: Request, version: str, run, suffix: str = "") -> str:
    return request.build_absolute_uri(reverse("oml-job", kwargs={"version": version, "job_id": run.pk}) + suffix)


# Async jobs, as Oracle's /jobs endpoints

JOB_PAGE_DEFAULT, JOB_PAGE_MAX = 50, 500


class JobView(APIView):
    @extend_schema(
        responses={
            202: JobStatusSerializer,
            302: OpenApiResponse(
                description="Finished (succeeded or failed): no body; the result is at Content-Location"
            ),
        },
        parameters=[
            OpenApiParameter(
                "Content-Location",
                str,
                location=OpenApiParameter.HEADER,
                response=[302],
                description="Absolute URL of the job's result (GET .../jobs/{jobId}/result).",
            )
        ],
        summary="An async job's status",
        operation_id="jobStatus",
    )
    def get(self, request: Request, version: str, job_id: str) -> Response:
        run = submission.job_get(user=request.user, job_id=job_id)
        if run.is_finished:
            # Content-Location, not Location, exactly as Oracle: HTTP clients would follow a Location
            # and never see the 302.
            return Response(status=302, headers={"Content-Location": job_url(request, version, run, "/result")})
        body = wire.job_status(run, attempt=submission.job_attempt(run))
        return Response(body, status=202)

    @extend_schema(
        responses={200: message("JobDeleted")}, summary="Stop (if running) and delete a job", operation_id="jobDelete"
    )
    def delete(self, request: Request, version: str, job_id: str) -> Response:
        run = submission.job_for_change(user=request.user, job_id=job_id)
        submission.job_delete(run=run)
        return Response({"result": "job deleted successfully"})


class JobResultView(APIView):
    @extend_schema(
        responses={200: JOB_RESULT},
        summary="A finished async job's result (the run's error body if it failed; 404 until it finishes)",
        operation_id="jobResult",
    )
    def get(self, request: Request, version: str, job_id: str) -> HttpResponseBase:
        run = submission.job_get(user=request.user, job_id=job_id)
        if not run.is_finished:
            raise NotFound("The job has not finished: its result is not ready.")
        return wire.oml_result_response(run, comments=run.comments if version == "v2" else "")


class JobListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description=f"At most {JOB_PAGE_MAX}; default {JOB_PAGE_DEFAULT}."),
            OpenApiParameter("offset", int),
        ],
        responses={200: JOB_LIST},
        summary="The caller's async jobs, newest first (v2)",
        operation_id="jobList",
    )
    def get(self, request: Request, version: str) -> Response:
        v2_only(version)
        limit = _query_int(request, "limit", JOB_PAGE_DEFAULT, minimum=1, maximum=JOB_PAGE_MAX)
        offset = _query_int(request, "offset", 0, minimum=0)
        page = list(submission.jobs_visible_to(request.user).order_by("-created_at")[offset : offset + limit + 1])
        now = timezone.now()
        items = [wire.job_row(run, now, attempt=submission.job_attempt(run)) for run in page[:limit]]
        return Response({"result": items, "limit": limit, "offset": offset, "hasMore": len(page) > limit})


class JobCancelView(APIView):
    @extend_schema(
        request=None, responses={200: message("JobCancelled")}, summary="Cancel a job (v2)", operation_id="jobCancel"
    )
    def post(self, request: Request, version: str, job_id: str) -> Response:
        v2_only(version)
        run = submission.job_for_change(user=request.user, job_id=job_id)
        submission.job_cancel(run=run)
        return Response({"result": "job cancelled successfully"})


def v2_only(version: str) -> None:
    if version != "v2":
        raise NotFound("This endpoint exists in v2 only: /oml/api/py-scripts/v2/...")


def _query_int(request: Request, name: str, default: int, *, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}: must be a whole number.") from None
    if value < minimum or (maximum is not None and value > maximum):
        raise BadRequest(
            f"{name}: must be between {minimum} and {maximum}." if maximum else f"{name}: at least {minimum}."
        )
    return value


# The operator's view


class AdminStatusView(APIView):
    @extend_schema(
        responses={200: OpenApiTypes.OBJECT},
        summary="Workers, queues, degrees of parallelism and the oldest job (admins)",
        operation_id="adminStatus",
    )
    def get(self, request: Request) -> Response:
        if not roles.is_admin(request.user):
            raise PermissionDenied("Only admins may see the service's status.")
        return Response(broker.service_status())


class ApplyView(APIView):
    """OML's table-apply, row-apply, group-apply and index-apply: the function fed with data, in pieces."""

    kind: str
    serializer_class: type[ExecutionRequestSerializer]

    def post(self, request: Request, version: str, name: str, owner: str | None = None) -> HttpResponseBase:
        return execute(request, version, name, owner, self.serializer_class, self.kind)


def _apply_view(kind: str, serializer: type[ExecutionRequestSerializer], summary: str) -> type[ApplyView]:
    schema = extend_schema(
        request=serializer,
        responses={200: ANY_RESULT, 201: JOB_ACCEPTED},
        parameters=[JOB_LOCATION],
        summary=summary,
    )
    name = f"{serializer.__name__.removesuffix('RequestSerializer')}View"
    return type(name, (ApplyView,), {"kind": kind, "serializer_class": serializer, "post": schema(ApplyView.post)})


TableApplyView = _apply_view(
    Run.Kind.TABLE_APPLY, TableApplyRequestSerializer, "Run a function on the whole input query (OML table-apply)"
)
RowApplyView = _apply_view(
    Run.Kind.ROW_APPLY, RowApplyRequestSerializer, "Run a function on chunks of rows of the input (OML row-apply)"
)
GroupApplyView = _apply_view(
    Run.Kind.GROUP_APPLY, GroupApplyRequestSerializer, "Run a function once per group of the input (OML group-apply)"
)
IndexApplyView = _apply_view(
    Run.Kind.INDEX_APPLY, IndexApplyRequestSerializer, "Run a function with the indexes 1..times (OML index-apply)"
)


# The script repository


class ScriptListView(APIView):
    @extend_schema(responses={200: SCRIPT_LIST}, summary="Scripts the caller may run", operation_id="scriptList")
    def get(self, request: Request, version: str) -> Response:
        rows = scripts.scripts_runnable_by(request.user).order_by("owner__username", "name")
        return Response({"result": ScriptRowSerializer(rows, many=True).data})

    @extend_schema(
        request=ScriptWriteSerializer,
        responses={201: SCRIPT_ONE, 200: SCRIPT_ONE},
        summary="Create a script (or replace it with overwrite=true)",
        operation_id="scriptCreate",
    )
    def post(self, request: Request, version: str) -> Response:
        body = ScriptWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        for field in ("name", "script"):
            if field not in data:
                raise serializers.ValidationError({field: "This field is required."})
        existed = scripts.Script.objects.filter(owner_id=request.user.pk, name=data["name"]).exists()
        script = scripts.script_create(
            owner=request.user,
            name=data["name"],
            source=data["script"],
            description=data.get("description", ""),
            is_global=data.get("isGlobal", False),
            overwrite=data["overwrite"],
            message=data.get("message", ""),
        )
        return Response({"result": ScriptRowSerializer(script).data}, status=200 if existed else 201)


class ScriptDetailView(APIView):
    @extend_schema(
        responses={200: PolymorphicProxySerializer("ScriptOrList", [SCRIPT_ONE, SCRIPT_LIST], None)},
        summary="One script the caller may run; in v2, user, all, global, grant or granted list scripts of that type",
        operation_id="scriptGet",
    )
    def get(self, request: Request, version: str, name: str) -> Response:
        if version == "v2" and name in scripts.SCRIPT_TYPES:
            # Oracle's GET v2/scripts/{scriptType}; no script may have these names.
            rows = scripts.scripts_of_type(user=request.user, script_type=name).order_by("owner__username", "name")
            return Response({"result": ScriptRowSerializer(rows, many=True).data})
        script = scripts.script_resolve(caller=request.user, name=name)
        return Response({"result": ScriptRowSerializer(script).data})

    @extend_schema(request=ScriptWriteSerializer, responses={200: SCRIPT_ONE}, operation_id="scriptUpdate")
    def put(self, request: Request, version: str, name: str) -> Response:
        """Change the caller's own script; changed source becomes a new version."""
        body = ScriptWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if data.get("name", name) != name:
            raise BadRequest("Renaming a script is not supported; create a new one.")
        with transaction.atomic():
            script = scripts.own_script(owner=request.user, name=name)
            script = scripts.script_update(
                script=script,
                by=request.user,
                source=data.get("script"),
                description=data.get("description"),
                is_global=data.get("isGlobal"),
                message=data.get("message", ""),
            )
        return Response({"result": ScriptRowSerializer(script).data})

    @extend_schema(responses={200: message("ScriptDeleted")}, operation_id="scriptDelete")
    def delete(self, request: Request, version: str, name: str) -> Response:
        script = scripts.own_script(owner=request.user, name=name)
        scripts.script_delete(script=script)
        return Response({"result": "script deleted successfully"})


# Datasets (beyond Oracle): the tables input queries read


class DatasetListView(APIView):
    parser_classes = [MultiPartParser, StrictJSONParser]

    @extend_schema(responses={200: DATASET_LIST}, summary="Datasets the caller may read", operation_id="datasetList")
    def get(self, request: Request, version: str) -> Response:
        rows = datasets.datasets_readable_by(request.user).order_by("owner__username", "name")
        return Response({"result": DatasetRowSerializer(rows, many=True).data})

    @extend_schema(
        request={"multipart/form-data": DatasetWriteSerializer},
        responses={201: DATASET_ONE, 200: DATASET_ONE},
        summary="Upload a CSV or Parquet file as a dataset (or replace one with overwrite=true)",
        operation_id="datasetCreate",
    )
    def post(self, request: Request, version: str) -> Response:
        body = DatasetWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        for field in ("name", "file"):
            if field not in data:
                raise serializers.ValidationError({field: "This field is required."})
        upload = data["file"]
        dataset, created = datasets.dataset_create(
            owner=request.user,
            name=data["name"],
            upload=upload,
            filename=upload.name,
            file_format=data.get("format"),
            description=data.get("description", ""),
            is_global=bool(data.get("isGlobal")),
            overwrite=data["overwrite"],
        )
        return Response({"result": DatasetRowSerializer(dataset).data}, status=201 if created else 200)


class DatasetDetailView(APIView):
    parser_classes = [MultiPartParser, StrictJSONParser]

    @extend_schema(
        parameters=[
            OpenApiParameter("owner", str, description="Read another user's shared dataset."),
            OpenApiParameter("rows", int, description="Rows to preview, 0 to 1000 (20)."),
        ],
        responses={200: DATASET_PREVIEW},
        summary="A dataset: schema and its first rows",
        operation_id="datasetGet",
    )
    def get(self, request: Request, version: str, name: str) -> Response:
        """`?owner=` reads another user's shared dataset; `?rows=` sets how many rows to preview (20)."""
        dataset = datasets.dataset_resolve(caller=request.user, name=name, owner_name=request.query_params.get("owner"))
        try:
            rows = min(max(int(request.query_params.get("rows", 20)), 0), 1000)
        except ValueError:
            raise BadRequest("rows: must be a whole number.") from None
        preview = datasets.dataset_preview(dataset=dataset, rows=rows)
        return Response({"result": {**DatasetRowSerializer(dataset).data, "PREVIEW": preview}})

    @extend_schema(
        request={"multipart/form-data": DatasetWriteSerializer},
        responses={200: DATASET_ONE},
        summary="Replace a dataset's data (file), or change its description or sharing",
        operation_id="datasetUpdate",
    )
    def put(self, request: Request, version: str, name: str) -> Response:
        body = DatasetWriteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        if data.get("name", name).lower() != name.lower():
            raise BadRequest("Renaming a dataset is not supported; upload a new one.")
        with transaction.atomic():
            dataset = datasets.own_dataset(owner=request.user, name=name)
            if "file" in data:
                upload = data["file"]
                datasets.dataset_replace(
                    dataset=dataset, upload=upload, filename=upload.name, file_format=data.get("format")
                )
            dataset = datasets.dataset_update(
                dataset=dataset, by=request.user, description=data.get("description"), is_global=data.get("isGlobal")
            )
        return Response({"result": DatasetRowSerializer(dataset).data})

    @extend_schema(responses={200: message("DatasetDeleted")}, operation_id="datasetDelete")
    def delete(self, request: Request, version: str, name: str) -> Response:
        datasets.dataset_delete(dataset=datasets.own_dataset(owner=request.user, name=name))
        return Response({"result": "dataset deleted successfully"})


class DatasetGrantView(APIView):
    @extend_schema(request=GrantSerializer, responses={200: message("DatasetGranted")}, operation_id="datasetGrant")
    def post(self, request: Request, version: str, name: str) -> Response:
        """Let another user read one of the caller's datasets."""
        body = GrantSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        dataset = datasets.own_dataset(owner=request.user, name=name)
        datasets.dataset_grant(dataset=dataset, grantee=_user(body.validated_data["user"]))
        return Response({"result": "dataset granted successfully"})


class DatasetRevokeView(APIView):
    @extend_schema(responses={200: message("DatasetRevoked")}, operation_id="datasetRevoke")
    def delete(self, request: Request, version: str, name: str, user: str) -> Response:
        """Take back another user's read access to one of the caller's datasets."""
        dataset = datasets.own_dataset(owner=request.user, name=name)
        datasets.dataset_revoke(dataset=dataset, grantee=_user(user))
        return Response({"result": "dataset revoked successfully"})


def _user(username: str):
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"User {username!r} not found.")
    return user


# Version metadata, as Oracle's GET /py-scripts and /py-scripts/{version}

VERSIONS = ("v1", "v2")


def lifecycle(version: str) -> dict:
    """Oracle's isLatest and lifecycle: v1 is "DEPRECATED@<OMLWEB_V1_SUNSET_DATE>" while that is set."""
    sunset = settings.OMLWEB_V1_SUNSET_DATE
    if version == "v1":
        return {"isLatest": False, "lifecycle": f"DEPRECATED@{sunset.isoformat()}" if sunset else "ACTIVE"}
    return {"isLatest": True, "lifecycle": "ACTIVE"}


def version_metadata(request: Request, version: str) -> dict:
    base = request.build_absolute_uri(f"/oml/api/py-scripts/{version}")
    children = ["envs", "scripts", "datasets", "jobs/{jobId}", "jobs/{jobId}/result"]
    if version == "v2":
        children += ["scripts/{scriptType}", "jobs", "jobs/{jobId}/cancel", "preload/conda", "preload/conda/{envName}"]
    for endpoint in ("do-eval", "table-apply", "row-apply", "group-apply", "index-apply"):
        children += [f"{endpoint}/{{scriptName}}", f"{endpoint}/{{scriptName}}/{{ownerName}}"]
    return {
        "version": version,
        **lifecycle(version),
        "links": [{"rel": "self", "href": base}] + [{"rel": "child", "href": f"{base}/{c}"} for c in children],
    }


class VersionCatalogView(APIView):
    @extend_schema(responses={200: VERSION_CATALOG}, summary="The API's versions", operation_id="versions")
    def get(self, request: Request) -> Response:
        return Response({"items": [version_metadata(request, version) for version in VERSIONS]})


class VersionView(APIView):
    # The URL pattern admits only v1 and v2; any other version is the API's JSON 404.
    @extend_schema(
        responses={200: VersionSerializer}, summary="One version's metadata and links", operation_id="version"
    )
    def get(self, request: Request, version: str) -> Response:
        return Response(version_metadata(request, version))
