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
    list_display = ["name", "status", "sealed", "audit_result", "host", "disk_count", "disk_size", "created"]
    change_form_template = "admin/templates/template/change_form.html"
    list_filter = ["status", "sealed", "host"]
    search_fields = ["name", "description", "vm_name"]
    inlines = [TemplateDiskInline]
    readonly_fields = ["status", "phase", "sealed", "guest_os", "shown_options", "audit_report", "timeline",
                       "seal_log", "error", "job", "vm_uuid", "created", "updated"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("host", "job").with_disk_summary()

    @admin.display(description="disks", ordering="n_disks")
    def disk_count(self, obj):
        return obj.n_disks

    @admin.display(description="size", ordering="size")
    def disk_size(self, obj):
        return f"{obj.size / 2**30:.2f} GiB" if obj.size else "-"

    @admin.display(description="job timeline")
    def timeline(self, obj):
        if not obj.job:
            return "-"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}%</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((c.action, c.kind, c.status, c.progress, c.started and c.started.strftime("%H:%M:%S"),
              c.completed and c.completed.strftime("%H:%M:%S"), c.description)
             for c in obj.job.children.order_by("created")))
        return format_html("<table><tr><th>action</th><th>kind</th><th>status</th><th>progress</th><th>start</th>"
                           "<th>end</th><th>what</th></tr>{}</table><pre>{}</pre>", rows, obj.job.log)

    @admin.display(description="virt-sysprep log")
    def seal_log(self, obj):
        seal = obj.job.children.filter(action="seal").order_by("-created").first() if obj.job else None
        return format_html('<pre style="max-height:24em;overflow:auto">{}</pre>', seal.log) if seal else "-"

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
        form = super().get_form(request, obj, change=change, **kwargs)
        form.may_seal = request.user.has_perm("templates.seal_template")
        return form

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

    def get_deleted_objects(self, objs, request):
        """VMs made from a template hold it (``Vm.template`` is PROTECT): the admin names them and refuses,
        as the API's 409 does, while any backs on it (thin) or is being made; full clones that are done
        are independent: the delete detaches them, so they do not hold the template here."""
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        try:
            for t in objs:
                service.check_no_vms(t)
        except service.Refused:
            return deleted, counts, perms_needed, protected
        return deleted, counts, perms_needed, []

    def delete_model(self, request, obj):
        """Deleting goes through a job that deletes the volumes on the host first."""
        try:
            op = service.request_delete(obj)
        except service.Refused as e:
            messages.error(request, e.message)
            return
        messages.info(request, f"Deleting {obj.name!r} and its volumes on {obj.host.name}: job {op.pk}.")

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def save_related(self, request, form, formsets, change):
        if change:
            super().save_related(request, form, formsets, change)
