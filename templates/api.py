import hashlib
import json
import uuid
from datetime import UTC

from django.db import connections
from django.db.models.fields.json import KT
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from hostjobs.api import HostJobSerializer
from hostjobs.models import Host
from sealing import options, service
from templates import idempotency
from templates.models import Template, TemplateDisk
from volumes.api import VolumeSerializer


class TemplateDiskSerializer(serializers.ModelSerializer):
    volume = VolumeSerializer(read_only=True)

    class Meta:
        model = TemplateDisk
        fields = ["index", "target", "source_path", "source_format", "volume"]


class SealOptionsField(serializers.JSONField):
    """Validated by sealing.options; shown without the root password's hash."""

    def to_internal_value(self, data):
        ser = options.SealOptionsSerializer(data=data)
        if not isinstance(data, dict):
            raise serializers.ValidationError("an object of seal options")
        ser.is_valid(raise_exception=True)
        return ser.to_stored()

    def to_representation(self, value):
        return options.public(value or {})


class TemplateSerializer(serializers.ModelSerializer):
    host = serializers.PrimaryKeyRelatedField(queryset=Host.objects.all())
    vm = serializers.CharField(source="vm_name", max_length=255)
    seal_options = SealOptionsField(required=False)
    disks = TemplateDiskSerializer(many=True, read_only=True)

    class Meta:
        model = Template
        fields = ["id", "name", "description", "host", "vm", "seal", "seal_options", "status", "phase", "sealed",
                  "guest_os", "audit", "error", "job", "disks", "created", "updated"]
        read_only_fields = ["status", "phase", "sealed", "guest_os", "audit", "error", "job", "created", "updated"]

    def validate(self, data):
        request = self.context.get("request")
        if data.get("seal") and request and not request.user.has_perm("templates.seal_template"):
            raise PermissionDenied("sealing needs the 'Can create sealed templates' permission")
        if data.get("seal_options") and not data.get("seal"):
            raise serializers.ValidationError({"seal_options": ["seal options need \"seal\": true"]})
        return data

    def validate_name(self, value):
        if not value.strip() or any(ord(c) < 32 for c in value):
            raise serializers.ValidationError("a name without control characters")
        return value

    def validate_vm(self, value):
        if any(ord(c) < 32 for c in value):
            raise serializers.ValidationError("a VM name without control characters")
        return value


class TemplateListSerializer(serializers.ModelSerializer):
    """One row of ``GET /api/templates/``: the template without its disks, volumes, options and audit
    items (``GET /api/templates/<id>/`` has them). The list view builds these rows with list_rows();
    this serializer documents them (OpenAPI) and is the reference a test compares list_rows with."""

    host = serializers.PrimaryKeyRelatedField(read_only=True)
    vm = serializers.CharField(source="vm_name", read_only=True)
    disk_count = serializers.IntegerField(source="n_disks", read_only=True)
    size = serializers.IntegerField(read_only=True, allow_null=True, help_text="virtual size of all disks, bytes")
    audit_passed = serializers.SerializerMethodField()

    class Meta:
        model = Template
        fields = ["id", "name", "description", "host", "vm", "seal", "status", "phase", "sealed", "guest_os",
                  "audit_passed", "error", "job", "disk_count", "size", "created", "updated"]
        read_only_fields = fields

    def get_audit_passed(self, obj) -> bool | None:
        return (obj.audit or {}).get("passed")


LIST_FIELDS = ("id", "name", "description", "host_id", "vm_name", "seal", "status", "phase", "sealed", "guest_os",
               "error", "job_id", "created", "updated")


def _datetime(value, tz=None):
    """As DRF's DateTimeField renders it (ISO 8601 in the current time zone, UTC as Z). SQLite's driver
    gives a naive datetime (UTC: Django stores them so), PostgreSQL an aware one. ``tz``: the current time
    zone, looked up once per list rather than once per value."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text = value.astimezone(tz or timezone.get_current_timezone()).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _json_bool(value):
    """A JSON boolean extracted by the database: SQLite gives 1/0, PostgreSQL 'true'/'false'."""
    return None if value is None else str(value).lower() in ("1", "true")


def _uuid(value):
    """A UUID column: SQLite stores 32 hex digits, PostgreSQL gives a UUID."""
    return None if value is None else str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))


def _int(value):
    return None if value is None else int(value)  # PostgreSQL's SUM(bigint) is a numeric


# The SQL of list pages by their shape (the request's filters, search and ordering, the page's number and
# size): the ORM takes longer to build and compile it than the database to run it. SQL and parameters
# only, a function of the request's parameters: never rows, never a count (those are read every time).
# Every reader sees the same list: were it ever narrowed per user, the user would join the shape.
_PAGE_SQL: dict[tuple, tuple[str, tuple]] = {}
PAGE_SQL_ENTRIES = 2000


def list_rows(queryset, ids=None, total=None, shape: tuple | None = None) -> list[dict]:
    """TemplateListSerializer's representation of the templates of ``queryset`` (ordered) whose pk is in
    ``ids`` (a subquery: the page), each with ``total`` (a scalar subquery) if given: one query, the disk
    count and size by correlated subqueries for the page's rows only. The ORM writes the SQL (kept under
    ``shape``, if given: whatever makes the same SQL, see _PAGE_SQL); its rows are read with the cursor and
    converted here, column by column (the ORM's per-value converters and per-row dicts cost more than
    the query)."""
    db = queryset.db
    key = (db, connections[db].vendor, shape)  # the SQL is the backend's dialect
    compiled = _PAGE_SQL.get(key) if shape is not None else None
    if compiled is None:
        qs = queryset.with_disk_summary()
        if ids is not None:
            qs = qs.filter(pk__in=ids)
        extra = {"total": total} if total is not None else {}
        qs = qs.values(*LIST_FIELDS, "n_disks", "size", audit_passed=KT("audit__passed"), **extra)
        sql, params = qs.query.get_compiler(db).as_sql()
        compiled = (sql, tuple(params))
        if shape is not None:
            if len(_PAGE_SQL) >= PAGE_SQL_ENTRIES:
                _PAGE_SQL.clear()
            _PAGE_SQL[key] = compiled
    sql, params = compiled
    with connections[db].cursor() as cursor:
        cursor.execute(sql, params)
        col = {d[0]: i for i, d in enumerate(cursor.description)}
        fetched = cursor.fetchall()
    (i_id, i_name, i_desc, i_host, i_vm, i_seal, i_status, i_phase, i_sealed, i_os, i_error, i_job, i_created,
     i_updated, i_n, i_size, i_audit) = (col[c] for c in (*LIST_FIELDS, "n_disks", "size", "audit_passed"))
    i_total = col.get("total")
    tz = timezone.get_current_timezone()
    out = []
    for r in fetched:
        row = {
            "id": r[i_id], "name": r[i_name], "description": r[i_desc], "host": r[i_host], "vm": r[i_vm],
            "seal": bool(r[i_seal]), "status": r[i_status], "phase": r[i_phase], "sealed": bool(r[i_sealed]),
            "guest_os": r[i_os], "audit_passed": _json_bool(r[i_audit]), "error": r[i_error],
            "job": _uuid(r[i_job]), "disk_count": r[i_n] or 0, "size": _int(r[i_size]),
            "created": _datetime(r[i_created], tz), "updated": _datetime(r[i_updated], tz),
        }
        if i_total is not None:
            row["total"] = r[i_total]
        out.append(row)
    return out


class Refused(APIException):
    def __init__(self, refused: service.Refused):
        self.status_code = refused.status
        detail = refused.message if isinstance(refused.message, dict) else [refused.message]
        super().__init__({refused.field: detail}, refused.code)


class TemplateViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                      mixins.DestroyModelMixin, viewsets.GenericViewSet):
    queryset = Template.objects.select_related("host").prefetch_related("disks__volume")
    serializer_class = TemplateSerializer
    throttle_scope = "template_create"

    def get_serializer_class(self):
        return TemplateListSerializer if self.action == "list" else TemplateSerializer

    def get_throttles(self):
        """Creating a template starts work on a host: throttled per user (VMSEAL_TEMPLATE_CREATE_RATE,
        429 with Retry-After beyond it). Reads are not."""
        return [ScopedRateThrottle()] if self.action == "create" else []

    @extend_schema(responses=TemplateListSerializer(many=True))
    def list(self, request, *args, **kwargs):
        """The hot read path: a page is one SQL query wherever it is in the list (its rows, filtered and
        ordered on the indexes, picked by a LIMIT/OFFSET subquery on the pks; their disks' count and size;
        the total: vmseal.pagination.Pagination.paginate_in_one_query), and its rows are built as plain
        dicts (list_rows, equal to TemplateListSerializer's output, which a test checks) rather than
        through DRF's per-field machinery, which cost more than the queries. No row and no count is
        cached: every answer is what the database holds when it is asked (only the SQL's text is kept,
        by the request's parameters: list_rows)."""
        ordered = self.filter_queryset(Template.objects.all())  # validates the filters every time (400)
        order = [*(ordered.query.order_by or Template._meta.ordering), "-pk"]  # ties: the same order in both
        ordered = ordered.order_by(*order)
        params = tuple(sorted((k, tuple(v)) for k, v in request.query_params.lists()
                              if k not in (self.paginator.page_query_param, self.paginator.page_size_query_param)))

        def rows(ids, total, number, size):
            return list_rows(ordered, ids, total, shape=(params, number, size))

        rows = self.paginator.paginate_in_one_query(ordered, request, rows)
        return self.get_paginated_response(rows)
    filterset_fields = {"status": ["exact"], "sealed": ["exact"], "host": ["exact"], "name": ["exact", "icontains"]}
    ordering_fields = ["created", "name", "status"]
    ordering = ["-created"]
    search_fields = ["name", "description", "vm_name"]

    @extend_schema(request=TemplateSerializer, responses={202: HostJobSerializer},
                   parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
                                                description="a retried request with the same key returns the same "
                                                            "job and never makes a second template")])
    def create(self, request, *args, **kwargs):
        key = request.headers.get("Idempotency-Key", "")
        if len(key) > 128:
            raise serializers.ValidationError({"Idempotency-Key": ["at most 128 characters"]})
        claim = None
        if key:  # before validation: a retry must not be refused as a duplicate of itself
            digest = hashlib.sha256(json.dumps(request.data, sort_keys=True, default=str).encode()).hexdigest()
            claim, replay = idempotency.claim(request.user, key, digest)
            if replay is not None:
                return self._accepted(replay)
        try:
            ser = self.get_serializer(data=request.data)
            ser.is_valid(raise_exception=True)  # a 400, or the 403 of a seal without seal_template
            op = service.start(Template(**ser.validated_data))
        except service.Refused as e:
            idempotency.release(claim)
            raise Refused(e) from None
        except BaseException:  # every refusal (4xx) and every failure (5xx) frees the key
            idempotency.release(claim)
            raise
        idempotency.complete(claim, op)
        return self._accepted(op)

    @extend_schema(responses={202: HostJobSerializer})
    def destroy(self, request, *args, **kwargs):
        """Delete the template and its volumes on the host (a job); 409 while another job runs."""
        try:
            op = service.request_delete(self.get_object())
        except service.Refused as e:
            raise Refused(e) from None
        return self._accepted(op)

    def _accepted(self, op):
        return Response(HostJobSerializer(op).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/jobs/{op.pk}/"})
