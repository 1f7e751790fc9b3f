import hashlib
import json

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.response import Response

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


class Refused(APIException):
    def __init__(self, refused: service.Refused):
        self.status_code = refused.status
        detail = refused.message if isinstance(refused.message, dict) else [refused.message]
        super().__init__({refused.field: detail}, refused.code)


class TemplateViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                      mixins.DestroyModelMixin, viewsets.GenericViewSet):
    queryset = Template.objects.select_related("host").prefetch_related("disks__volume")
    serializer_class = TemplateSerializer
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
        ser = self.get_serializer(data=request.data)
        if not ser.is_valid():
            idempotency.release(claim)
            raise serializers.ValidationError(ser.errors)
        try:
            op = service.start(Template(**ser.validated_data))
        except service.Refused as e:
            idempotency.release(claim)
            raise Refused(e) from None
        except Exception:
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
