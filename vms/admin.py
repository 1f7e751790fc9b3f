from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from audit import events as audit
from audit.models import Outcome
from sealing.service import Refused
from vms import service
from vms.forms import NewVmForm
from vms.models import Vm, VmDisk


class VmDiskInline(admin.TabularInline):
    model = VmDisk
    extra = 0
    can_delete = False
    fields = ["index", "target", "template_volume", "volume"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Vm)
class VmAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "phase", "clone", "template", "host", "hostname", "created"]
    list_filter = ["status", "clone", "host"]
    search_fields = ["name", "hostname"]
    inlines = [VmDiskInline]
    change_form_template = "admin/templates/template/change_form.html"  # the job box, as a template's page
    fields = ["name", "template", "host", "clone", "hostname", "ssh_authorized_keys", "root_password_set", "start",
              "uuid", "status", "phase", "identity_appliance", "error", "job", "timeline", "created", "updated"]
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("host", "template", "job")

    def has_add_permission(self, request):
        return False  # "New VM" (the form view below) starts the operation instead

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="job timeline")
    def timeline(self, obj):
        if not obj.job:
            return "-"
        rows = format_html_join(
            "", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((c.action, c.status, c.description, c.error) for c in obj.job.children.order_by("created")))
        return format_html("<table><tr><th>action</th><th>status</th><th>what</th><th>error</th></tr>{}</table>"
                           "<pre>{}</pre>", rows, obj.job.log)

    def get_urls(self):
        return [path("new/", self.admin_site.admin_view(self.new_vm), name="vms_vm_new"), *super().get_urls()]

    def new_vm(self, request):
        """The "New VM" form (linked from a template's page): POST /api/vms/'s inputs."""
        if not request.user.has_perm("vms.add_vm"):
            raise PermissionDenied
        initial = {"template": request.GET.get("template")} if request.GET.get("template") else {}
        form = NewVmForm(request.POST or None, initial=initial)
        if request.method == "POST" and not form.is_valid():  # recorded once, as the API's refusals are
            audit.record("vm.create", outcome=Outcome.REFUSED, object_type_="vm",
                         object_repr=request.POST.get("name", ""),
                         reason="; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
        if request.method == "POST" and form.is_valid():
            vm = form.cleaned_data["vm"]
            try:
                op = service.start(vm)
            except Refused as e:
                audit.record("vm.create", outcome=Outcome.REFUSED, reason=f"{e.field}: {e.message}", object_type_="vm",
                             object_repr=vm.name)
                form.add_error(e.field if e.field in form.fields else None, e.message)
            else:
                audit.record("vm.create", vm)
                messages.info(request, f"VM {vm.name!r} is being made; its job is {op.pk}.")
                return redirect(reverse("admin:vms_vm_change", args=[vm.pk]))
        context = {**self.admin_site.each_context(request), "title": "New VM", "form": form,
                   "opts": self.model._meta}
        return TemplateResponse(request, "admin/vms/vm/new.html", context)

    def delete_view(self, request, object_id, extra_context=None):
        """The confirmation page says the domain's state (a read-only look on the host); a running VM needs
        the explicit force box ticked (the API's ``?force=true``): it is powered off first."""
        extra = dict(extra_context or {})
        obj = self.get_object(request, object_id)
        if obj is not None and request.method == "GET":
            try:
                extra["domain_state"] = service.domain_state(obj)
            except Refused as e:
                extra["domain_state_error"] = e.message
            extra["running"] = extra.get("domain_state") not in (None, "", "shut off")
        return super().delete_view(request, object_id, extra)

    def delete_model(self, request, obj):
        """Deleting goes through a job that removes the domain, volumes and seed on the host first. A
        running VM is refused unless the confirmation's force box was ticked (``force=true``: powered off
        first); the bulk delete action never forces."""
        force = request.POST.get("force", "") == "true" and request.POST.get("action") != "delete_selected"
        try:
            op = service.request_delete(obj, force=force)
        except Refused as e:
            messages.error(request, e.message + (" (tick the force box to power it off first)"
                                                 if e.code == "vm_running" else ""))
            return
        messages.info(request, f"Deleting VM {obj.name!r} (domain, volumes, seed) on {obj.host.name}"
                               + (", powered off first" if force else "") + f": job {op.pk}.")

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    def response_delete(self, request, obj_display, obj_id):
        """Not Django's "deleted successfully": the VM stays (locked) until its delete job ends, or was
        refused; the messages above say which."""
        return redirect(reverse("admin:vms_vm_changelist"))
