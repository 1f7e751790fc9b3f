from rest_framework import serializers, viewsets

from hostjobs.models import Host, HostJob
from hostjobs.transport import parse_host_key


class HostSerializer(serializers.ModelSerializer):
    class Meta:
        model = Host
        fields = ["id", "name", "address", "port", "ssh_user", "host_key", "pool_path", "guestfs_backend_settings",
                  "libvirt_uri", "created"]
        read_only_fields = ["libvirt_uri", "created"]

    def validate_host_key(self, value):
        try:
            ktype, blob = parse_host_key(value)
        except ValueError as e:
            raise serializers.ValidationError(str(e)) from None
        return f"{ktype} {blob}"

    def validate_ssh_user(self, value):
        if not value or not all(c.isalnum() or c in "._-" for c in value) or value.startswith("-"):
            raise serializers.ValidationError("a user name of letters, digits, '.', '_' and '-'")
        return value

    def validate_pool_path(self, value):
        import posixpath

        if not value.startswith("/") or posixpath.normpath(value) != value or any(
            c in value for c in "\n\0'\"\\$`; "
        ):
            raise serializers.ValidationError("an absolute, normalised directory path without special characters")
        return value

    def validate_guestfs_backend_settings(self, value):
        if value and not all(c.isalnum() or c in "_-:=," for c in value):
            raise serializers.ValidationError("letters, digits and _-:=, only (e.g. force_tcg)")
        return value


class HostViewSet(viewsets.ModelViewSet):
    queryset = Host.objects.all()
    serializer_class = HostSerializer


class ChildJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = HostJob
        fields = ["id", "kind", "action", "status", "progress", "target", "description", "error", "started",
                  "completed"]


class HostJobSerializer(serializers.ModelSerializer):
    children = ChildJobSerializer(many=True, read_only=True)

    class Meta:
        model = HostJob
        fields = ["id", "host", "parent", "kind", "action", "status", "progress", "target", "description",
                  "error", "error_code", "created", "started", "completed", "children"]
        read_only_fields = fields


class HostJobDetailSerializer(HostJobSerializer):
    class Meta(HostJobSerializer.Meta):
        fields = [*HostJobSerializer.Meta.fields, "log"]
        read_only_fields = fields


class HostJobViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = HostJob.objects.prefetch_related("children")

    def get_serializer_class(self):
        return HostJobDetailSerializer if self.action == "retrieve" else HostJobSerializer
