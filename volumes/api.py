from rest_framework import serializers, viewsets

from volumes.models import Volume


class VolumeSerializer(serializers.ModelSerializer):
    class Meta:
        model = Volume
        fields = ["id", "host", "type", "legality", "generation", "format", "size", "actual_size", "path", "error",
                  "created", "updated"]
        read_only_fields = fields


class VolumeViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Volume.objects.all()
    serializer_class = VolumeSerializer
    filterset_fields = ["host", "type", "legality"]
    ordering_fields = ["created", "size"]
