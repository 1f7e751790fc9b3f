from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import APIException
from rest_framework.response import Response

from hostjobs.api import HostJobSerializer
from hostjobs.models import Host
from sealing import service
from templates.models import Template, TemplateDisk
from volumes.api import VolumeSerializer


class TemplateDiskSerializer(serializers.ModelSerializer):
    volume = VolumeSerializer(read_only=True)

    class Meta:
        model = TemplateDisk
        fields = ["index", "target", "source_path", "source_format", "volume"]


class TemplateSerializer(serializers.ModelSerializer):
    host = serializers.PrimaryKeyRelatedField(queryset=Host.objects.all())
    vm = serializers.CharField(source="vm_name", max_length=255)
    disks = TemplateDiskSerializer(many=True, read_only=True)

    class Meta:
        model = Template
        fields = ["id", "name", "description", "host", "vm", "seal", "status", "phase", "sealed", "error", "job",
                  "disks", "created", "updated"]
        read_only_fields = ["status", "phase", "sealed", "error", "job", "created", "updated"]

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
        super().__init__({refused.field: [refused.message]}, refused.code)


class TemplateViewSet(mixins.CreateModelMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin,
                      viewsets.GenericViewSet):
    queryset = Template.objects.select_related("host").prefetch_related("disks__volume")
    serializer_class = TemplateSerializer

    def create(self, request, *args, **kwargs):
        ser = self.get_serializer(data=request.data)
        ser.is_valid(raise_exception=True)
        try:
            op = service.start(Template(**ser.validated_data))
        except service.Refused as e:
            raise Refused(e) from None
        return Response(HostJobSerializer(op).data, status=status.HTTP_202_ACCEPTED,
                        headers={"Location": f"/api/jobs/{op.pk}/"})
