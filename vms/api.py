"""The VM API: ``POST /api/vms/`` (202 + the operation job), ``GET /api/vms/``, ``GET /api/vms/<id>/``,
``DELETE /api/vms/<id>/[?force=true]`` (202 + the delete job). Templates' conventions (templates.api):
Location header, Idempotency-Key, 4xx naming the field, the model's own validation. Permissions:
vms.add_vm, vms.view_vm, vms.delete_vm. The root password hash is accepted, never shown."""

from __future__ import annotations

import hashlib
import json

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, permissions, serializers, status, viewsets
from rest_framework.response import Response

from hostjobs.api import HostJobSerializer
from hostjobs.models import Host
from sealing import service as template_service
from templates import idempotency
from templates.api import Refused
from templates.models import Template
from vms import service
from vms.models import Clone, Vm, VmDisk
from volumes.api import VolumeSerializer

IDENTITY_FIELDS = ("hostname", "ssh_authorized_keys", "root_password_hash")


class VmPermissions(permissions.DjangoModelPermissions):
    """Reads need vms.view_vm too (DRF's default lets any authenticated user read)."""

    perms_map = {**permissions.DjangoModelPermissions.perms_map,
                 "GET": ["%(app_label)s.view_%(model_name)s"], "HEAD": ["%(app_label)s.view_%(model_name)s"]}


class IdentitySerializer(serializers.Serializer):
    hostname = serializers.CharField(required=False, allow_blank=True, max_length=253, trim_whitespace=False,
                                     help_text="the guest's host name (RFC 1123); default: the VM's name")
    ssh_authorized_keys = serializers.ListField(child=serializers.CharField(max_length=16384, trim_whitespace=False),
                                                required=False, help_text="public key lines for root")
    root_password_hash = serializers.CharField(required=False, allow_blank=True, max_length=255, write_only=True,
                                               trim_whitespace=False,
                                               help_text="a crypt(3) hash ('$6$...'), never a password; not shown")


class VmDiskSerializer(serializers.ModelSerializer):
    volume = VolumeSerializer(read_only=True)

    class Meta:
        model = VmDisk
        fields = ["index", "target", "template_volume", "volume"]


class VmSerializer(serializers.ModelSerializer):
    # null in an answer once a full clone's template was deleted; a request must name one
    template = serializers.PrimaryKeyRelatedField(queryset=Template.objects.all(), allow_null=True,
                                                  help_text="the template; null once a full clone's was deleted")
    host = serializers.PrimaryKeyRelatedField(queryset=Host.objects.all(), required=False,
                                              help_text="default: the template's host")
    clone = serializers.ChoiceField(choices=Clone.choices, default=Clone.THIN)
    identity = IdentitySerializer(required=False, write_only=True)
    disks = VmDiskSerializer(many=True, read_only=True)

    class Meta:
        model = Vm
        fields = ["id", "name", "template", "host", "clone", "identity", "hostname", "ssh_authorized_keys",
                  "root_password_set", "start", "uuid", "status", "phase", "identity_appliance", "error", "job",
                  "disks", "created", "updated"]
        read_only_fields = ["hostname", "ssh_authorized_keys", "root_password_set", "uuid", "status", "phase",
                            "identity_appliance", "error", "job", "created", "updated"]
        extra_kwargs = {"name": {"validators": []}}  # the model's own, once, in validate()
        validators = []  # (host, name) is the service's check: host is optional here

    def validate_template(self, value):
        if value is None:
            raise serializers.ValidationError("This field may not be null.")
        return value

    def validate(self, data):
        """The model's validation (``Vm.full_clean``), the same as the admin's and the CLI's; its errors
        named as the request names the fields (``identity.hostname``, ...)."""
        identity = dict(data.pop("identity", {}))
        template = data["template"]
        vm = Vm(name=data["name"], template=template, host=data.get("host") or template.host,
                clone=data.get("clone", Clone.THIN), start=data.get("start", False),
                hostname=identity.get("hostname", ""), ssh_authorized_keys=identity.get("ssh_authorized_keys", []),
                root_password_hash=identity.get("root_password_hash", ""))
        try:
            vm.full_clean(validate_unique=False, validate_constraints=False)
        except DjangoValidationError as e:
            errors = serializers.as_serializer_error(e)
            named = {k: v for k, v in errors.items() if k not in IDENTITY_FIELDS}
            inner = {k: v for k, v in errors.items() if k in IDENTITY_FIELDS}
            if inner:
                named["identity"] = inner
            raise serializers.ValidationError(named) from None
        return {"vm": vm}


class VmViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                mixins.DestroyModelMixin, viewsets.GenericViewSet):
    queryset = Vm.objects.select_related("host", "template").prefetch_related("disks__volume")
    serializer_class = VmSerializer
    permission_classes = [VmPermissions]
    filterset_fields = {"status": ["exact"], "host": ["exact"], "template": ["exact"], "name": ["exact", "icontains"]}
    ordering_fields = ["created", "name", "status"]
    ordering = ["-created"]
    search_fields = ["name", "hostname"]

    @extend_schema(request=VmSerializer, responses={202: HostJobSerializer},
                   parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False,
                                                description="a retried request with the same key returns the same "
                                                            "job and never makes a second VM")])
    def create(self, request, *args, **kwargs):
        key = request.headers.get("Idempotency-Key", "")
        if len(key) > 128:
            raise serializers.ValidationError({"Idempotency-Key": ["at most 128 characters"]})
        claim = None
        if key:
            digest = hashlib.sha256(json.dumps({"vm": request.data}, sort_keys=True, default=str).encode()).hexdigest()
            claim, replay = idempotency.claim(request.user, key, digest)
            if replay is not None:
                return self._accepted(replay)
        try:
            ser = self.get_serializer(data=request.data)
            ser.is_valid(raise_exception=True)
            op = service.start(ser.validated_data["vm"])
        except template_service.Refused as e:
            idempotency.release(claim)
            raise Refused(e) from None
        except BaseException:
            idempotency.release(claim)
            raise
        idempotency.complete(claim, op)
        return self._accepted(op)

    @extend_schema(responses={202: HostJobSerializer},
                   parameters=[OpenApiParameter("force", bool, description="power a running VM off first")])
    def destroy(self, request, *args, **kwargs):
        """Delete the VM: its domain, volumes and seed on the host (a job); a running VM is a 409 unless
        ``?force=true``; 409 while another job of it runs."""
        force = request.query_params.get("force", "").lower()
        if force not in ("", "true", "false", "1", "0"):
            raise serializers.ValidationError({"force": ["true or false"]})
        try:
            op = service.request_delete(self.get_object(), force=force in ("true", "1"))
        except template_service.Refused as e:
            raise Refused(e) from None
        return self._accepted(op)

    def _accepted(self, op):
        return Response(HostJobSerializer(op).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/jobs/{op.pk}/"})
