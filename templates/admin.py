from django.contrib import admin, messages

from sealing import service
from templates.forms import NewTemplateForm
from templates.models import Template, TemplateDisk


class TemplateDiskInline(admin.TabularInline):
    model = TemplateDisk
    extra = 0
    can_delete = False
    fields = ["index", "target", "source_path", "volume"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "sealed", "host", "vm_name", "phase", "created"]
    list_filter = ["status", "sealed", "host"]
    search_fields = ["name", "description", "vm_name"]
    inlines = [TemplateDiskInline]
    readonly_fields = ["status", "phase", "sealed", "error", "job", "vm_uuid", "created", "updated"]

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = NewTemplateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return list(NewTemplateForm.Meta.fields)
        return ["name", "description", "host", "vm_name", "seal", *self.readonly_fields]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["host", "vm_name", "seal", *self.readonly_fields]

    def get_inlines(self, request, obj):
        return self.inlines if obj else []

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        try:
            service.start(obj)
        except service.Refused as e:  # the VM changed state between the form's check and now
            messages.error(request, e.message)
            raise
        messages.info(request, f"Template {obj.name!r} is being created; its job is {obj.job_id}.")

    def save_related(self, request, form, formsets, change):
        if change:
            super().save_related(request, form, formsets, change)
