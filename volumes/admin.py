from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.template.response import TemplateResponse

from hostjobs.errors import VmsealError
from volumes import reconcile
from volumes.models import UnknownVolume, Volume


@admin.register(Volume)
class VolumeAdmin(admin.ModelAdmin):
    list_display = ["id", "host", "type", "legality", "generation", "size", "path", "error"]
    list_filter = ["type", "legality", "host"]
    readonly_fields = [f.name for f in Volume._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(UnknownVolume)
class UnknownVolumeAdmin(admin.ModelAdmin):
    """Volumes a host scan found in a host's pool that the database does not know. The scan never
    removes them; the action below does, on the host, one explicit request with a reason."""

    list_display = ["volume_id", "host", "pool", "files", "meta", "first_seen", "last_seen"]
    list_filter = ["host"]
    readonly_fields = [f.name for f in UnknownVolume._meta.fields]
    actions = ["remove_from_host"]

    @admin.action(description="Remove selected volumes from their host", permissions=["remove"])
    def remove_from_host(self, request, queryset):
        reason = request.POST.get("reason", "").strip()
        if request.POST.get("confirm") != "yes" or not reason:
            return TemplateResponse(request, "volumes/remove_unknown.html", {
                **self.admin_site.each_context(request), "title": "Remove unknown volumes from their host",
                "objects": queryset, "opts": self.model._meta, "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "missing_reason": request.POST.get("confirm") == "yes"})
        by = f"{request.user.get_username()} (admin)"
        for unknown in queryset.select_related("host"):
            label = str(unknown)
            try:
                job = reconcile.remove_unknown(unknown, reason=reason, by=by)
            except VmsealError as e:
                self.message_user(request, f"{label}: not removed: {e}", messages.ERROR)
                continue
            self.message_user(request, f"{label}: removed (job {job.pk})" if job
                              else f"{label}: no longer on the host; nothing removed")

    def has_remove_permission(self, request):
        return request.user.has_perm("volumes.delete_unknownvolume")

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # removing the row would not remove the volume: the next scan finds it
        return actions

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return obj is None and super().has_delete_permission(request)
