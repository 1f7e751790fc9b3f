from django.contrib import admin, messages
from django.utils.html import format_html, format_html_join

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
    list_display = ["name", "status", "sealed", "audit_result", "host", "vm_name", "phase", "created"]
    list_filter = ["status", "sealed", "host"]
    search_fields = ["name", "description", "vm_name"]
    inlines = [TemplateDiskInline]
    readonly_fields = ["status", "phase", "sealed", "guest_os", "shown_options", "audit_report", "error", "job",
                       "vm_uuid", "created", "updated"]

    @admin.display(description="audit")
    def audit_result(self, obj):
        if not obj.audit:
            return "-"
        return "passed" if obj.audit.get("passed") else "failed"

    @admin.display(description="seal options")
    def shown_options(self, obj):
        from sealing.options import public

        return public(obj.seal_options) or "-"

    @admin.display(description="audit report")
    def audit_report(self, obj):
        items = (obj.audit or {}).get("items", [])
        if not items:
            return "-"
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                                ((i["item"], "ok" if i["ok"] else "FAILED", i["detail"]) for i in items))
        return format_html("<table><tr><th>item</th><th>result</th><th>detail</th></tr>{}</table>", rows)

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = NewTemplateForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request, obj=None):
        if obj is None:
            return list(NewTemplateForm.Meta.fields) + NewTemplateForm.option_fields
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
