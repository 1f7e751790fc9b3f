from django.contrib import admin

from volumes.models import Volume


@admin.register(Volume)
class VolumeAdmin(admin.ModelAdmin):
    list_display = ["id", "host", "type", "legality", "generation", "size", "path"]
    list_filter = ["type", "legality", "host"]
    readonly_fields = [f.name for f in Volume._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
