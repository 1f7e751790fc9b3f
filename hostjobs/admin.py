from django.contrib import admin, messages

from hostjobs.errors import InvalidTransition
from hostjobs.models import Host, HostJob


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ["name", "address", "port", "ssh_user", "pool_path", "created"]
    search_fields = ["name", "address"]


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
