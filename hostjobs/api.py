from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, permissions, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.throttling import ScopedRateThrottle

from hostjobs.errors import HostInUse, InvalidTransition
from hostjobs.models import Host, HostJob


class HostSerializer(serializers.ModelSerializer):
    class Meta:
        model = Host
        fields = ["id", "name", "address", "port", "ssh_user", "host_key", "pool_path", "vm_pool_path",
                  "guestfs_backend_settings",
                  "max_parallel_seals", "seal_timeout", "copy_rate_limit", "callback_url", "libvirt_uri", "created"]
        read_only_fields = ["libvirt_uri", "created"]

    def validate(self, attrs):
        """The model's own validation (``Host.full_clean``: its fields' validators and ``clean()``), the
        same as the admin's and ``host_add``'s, on an unsaved copy with this request's values; its
        normalised values (the host key's line) are the ones saved. A change the stored state forbids
        (pool_path while the host has volumes) is a 409 naming the field."""
        host = Host(**{f.attname: getattr(self.instance, f.attname) for f in Host._meta.concrete_fields}) \
            if self.instance is not None else Host()
        if self.instance is not None:
            host._state.adding = False
        for k, val in attrs.items():
            setattr(host, k, val)
        try:
            host.full_clean()
        except DjangoValidationError as e:
            detail = serializers.as_serializer_error(e)
            if any(err.code == HostInUse.code for errs in detail.values() for err in errs):
                raise Conflict(detail) from None
            raise serializers.ValidationError(detail) from None
        return {k: getattr(host, k) for k in attrs}


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "conflicts with the stored state"
    default_code = "conflict"


class DiskInfoSerializer(serializers.Serializer):
    target = serializers.CharField()
    type = serializers.CharField(help_text="libvirt's disk type: file, block, network, volume")
    path = serializers.CharField()
    format = serializers.CharField()
    readonly = serializers.BooleanField()
    size = serializers.IntegerField(allow_null=True)


class VMSerializer(serializers.Serializer):
    name = serializers.CharField()
    uuid = serializers.CharField()
    state = serializers.CharField()
    disks = DiskInfoSerializer(many=True)
    problems = serializers.ListField(child=serializers.CharField(), help_text=(
        "why this VM cannot become a template (a disk that is not a file, or whose backing chain leaves the "
        "VM's own files), naming the disk; empty when it can"))


class CanListVMs(permissions.BasePermission):
    """Listing a host's VMs opens a libvirt connection to it: for who may see hosts or make templates
    (the New Template form uses it). A string, not an import: hostjobs does not import templates."""

    def has_permission(self, request, view):
        user = request.user
        return user.is_authenticated and any(user.has_perm(p) for p in ("hostjobs.view_host", "templates.add_template"))


class HostViewSet(viewsets.ModelViewSet):
    queryset = Host.objects.all()
    serializer_class = HostSerializer
    filterset_fields = ["name", "address"]
    ordering_fields = ["name", "created"]
    search_fields = ["name", "address"]
    throttle_scope = None  # only vms is throttled (its own scope)

    def destroy(self, request, *args, **kwargs):
        """409 while the host has templates, volumes or jobs, saying which; nothing is deleted."""
        host = self.get_object()
        try:
            host.check_deletable()
            host.delete()
        except HostInUse as e:
            return Response({"detail": e.message, "code": e.code}, status=status.HTTP_409_CONFLICT)
        except ProtectedError:  # one was added meanwhile
            return Response({"detail": f"host {host.name} is in use: delete its templates, volumes and jobs "
                             "first", "code": HostInUse.code}, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={200: VMSerializer(many=True)}, filters=False)
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[], permission_classes=[CanListVMs],
            throttle_classes=[ScopedRateThrottle], throttle_scope="host_vms")
    def vms(self, request, pk=None):
        """The host's shut-off VMs (the ones that can become templates), with their disks, read live
        from libvirt (one call over the host's pinned connection), and why a VM's disks cannot be copied
        (``problems``; one SSH call reads the disks' image headers). Needs ``view_host`` or
        ``add_template``; throttled per user (VMSEAL_HOST_VMS_RATE)."""
        from hostjobs import port
        from hostjobs.errors import HostError

        host = self.get_object()
        try:
            domains = port.for_host(host).list_domains(stopped_only=True)
            port.for_host(host).check_sources(domains)
        except HostError as e:
            return Response({"detail": str(e), "code": e.code}, status=status.HTTP_502_BAD_GATEWAY)
        return Response(VMSerializer(domains, many=True).data)


class ChildJobSerializer(serializers.ModelSerializer):
    class Meta:
        model = HostJob
        fields = ["id", "kind", "action", "step", "status", "progress", "target", "description", "error",
                  "started", "completed"]


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


class CanCancelJobs(permissions.BasePermission):
    def has_permission(self, request, view):
        return request.user.is_authenticated and request.user.has_perm("hostjobs.change_hostjob")


class HostJobViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = HostJob.objects.prefetch_related("children")
    filterset_fields = ["status", "kind", "action", "host", "parent"]
    ordering_fields = ["created", "completed", "status"]

    def get_serializer_class(self):
        return HostJobDetailSerializer if self.action == "retrieve" else HostJobSerializer

    @action(detail=True, methods=["post"], permission_classes=[CanCancelJobs])
    def cancel(self, request, pk=None):
        """Cancel a job (``HostJob.cancel``): ``aborting`` until its worker has stopped the host work and
        rolled back, then ``aborted``; a job not started yet is ``aborted`` at once. 409 when the job
        already ended or is being cancelled, or is a delete (it runs to its end)."""
        job = self.get_object()
        try:
            job.cancel(f"cancelled by {request.user.get_username()}")
        except InvalidTransition as e:
            return Response({"detail": str(e), "code": e.code, "status": job.status}, status=status.HTTP_409_CONFLICT)
        return Response(HostJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)
