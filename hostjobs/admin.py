from django.contrib import admin, messages

from hostjobs.errors import HostInUse, InvalidTransition
from hostjobs.models import Host, HostJob


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "reachable", "versions", "kvm", "free_space", "last_checked"]
    search_fields = ["name", "address"]
    readonly_fields = ["last_check", "last_checked", "created"]
    actions = ["recheck"]

    def get_deleted_objects(self, objs, request):
        """A host that still has templates, volumes or jobs is not deleted (the delete page and the
        bulk action): the page says which, instead of the protected rows' permissions."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        held = []
        for host in objs:
            try:
                host.check_deletable()
            except HostInUse as e:
                held.append(e.message)
        return (deleted, counts, set(), held) if held else (deleted, counts, perms_needed, protected)

    @admin.action(description="Re-check selected hosts")
    def recheck(self, request, queryset):
        from django_q.tasks import async_task

        for host in queryset:
            async_task("hostjobs.tasks.check_host", host.pk, task_name=f"check-host-{host.pk}")
        self.message_user(request, f"checking {queryset.count()} host(s); results appear here in a few seconds")

    @admin.display(boolean=True)
    def reachable(self, obj):
        return obj.last_check.get("reachable") if obj.last_check else None

    @admin.display(description="libvirt / virt-sysprep")
    def versions(self, obj):
        c = obj.last_check or {}
        return " / ".join(filter(None, [(c.get("libvirtd") or "").split()[-1:] and c["libvirtd"].split()[-1],
                                        c.get("virt_sysprep")])) or "-"

    @admin.display(boolean=True, description="KVM")
    def kvm(self, obj):
        return (obj.last_check or {}).get("kvm")

    @admin.display(description="pool free")
    def free_space(self, obj):
        free = (obj.last_check or {}).get("pool_free_bytes")
        return f"{free / 2**30:.1f} GiB" if free is not None else "-"


class ChildJobInline(admin.TabularInline):
    model = HostJob
    fk_name = "parent"
    extra = 0
    can_delete = False
    fields = ["kind", "action", "status", "progress", "description", "error", "started", "completed"]
    readonly_fields = fields
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(HostJob)
class HostJobAdmin(admin.ModelAdmin):
    list_display = ["id", "action", "kind", "status", "progress", "host", "target", "created", "completed"]
    list_filter = ["status", "kind", "action", "host"]
    search_fields = ["target", "description", "error"]
    readonly_fields = [f.name for f in HostJob._meta.fields]
    inlines = [ChildJobInline]
    actions = ["cancel_jobs"]

    @admin.action(description="Cancel selected jobs", permissions=["cancel"])
    def cancel_jobs(self, request, queryset):
        for job in queryset:
            try:
                job.cancel(f"cancelled by {request.user.get_username()} (admin)")
                self.message_user(request, f"{job}: cancelling")
            except InvalidTransition as e:
                self.message_user(request, str(e), messages.WARNING)

    def has_cancel_permission(self, request):
        return request.user.has_perm("hostjobs.change_hostjob")

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("host")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return obj is not None and obj.is_terminal and super().has_delete_permission(request, obj)
