"""The audit trail in the admin (read-only for everyone, superusers included), and the admin's own
changing actions recorded: ``AuditedAdmin`` is mixed into the admins of ``AUDITED`` when the app is
ready (hostjobs and templates know nothing of the audit), and new admins may inherit it directly.

Recorded once each: add and change (accepted when saved, refused when the form is invalid, with its
errors), delete (one event per object, the bulk action too; refused when the object is protected or
the admin said why not), and the ``AUDITED_ACTIONS`` (e.g. cancelling jobs), one event per object."""

from __future__ import annotations

from django.contrib import admin, messages

from audit import events
from audit.models import Event, Outcome

# model label -> admin actions recorded, {action method: verb}
AUDITED = {"hostjobs.host": {}, "hostjobs.hostjob": {"cancel_jobs": "cancel"}, "templates.template": {},
           "vms.vm": {}}  # the VM admin's "New VM" view records its own vm.create (vms.admin)


def _new_problems(request, before: int) -> list[str]:
    """Warnings and errors the admin queued for the user since ``before`` (the refusals it explains)."""
    queued = getattr(messages.get_messages(request), "_queued_messages", [])
    return [str(m.message) for m in queued[before:] if m.level >= messages.WARNING]


def _queued(request) -> int:
    return len(getattr(messages.get_messages(request), "_queued_messages", []))


def _form_errors(form, formsets=()) -> str:
    parts = [f"{k}: {' '.join(v)}" for k, v in form.errors.items()]
    for fs in formsets:
        parts += [f"{k}: {' '.join(v)}" for errs in fs.errors for k, v in errs.items()]
        parts += list(fs.non_form_errors())
    return "; ".join(parts)


class AuditedAdmin:
    """Records the admin's add, change, delete and audited actions (``audit_actions``)."""

    audit_actions: dict = {}

    def _type(self):
        return events.object_type(self.model)

    def save_model(self, request, obj, form, change):
        verb = "update" if change else "create"
        changes = form.changed_data if change else []
        with events.attempt(f"{self._type()}.{verb}", obj, changes=changes):  # a refusal raises
            super().save_model(request, obj, form, change)

    def render_change_form(self, request, context, add=False, change=False, form_url="", obj=None):
        form = context.get("adminform").form if context.get("adminform") else None
        formsets = [f.formset for f in context.get("inline_admin_formsets", [])]
        if request.method == "POST" and form is not None and (form.errors or any(f.errors for f in formsets)):
            events.record(f"{self._type()}.{'create' if add else 'update'}", obj if obj and obj.pk else None,
                          outcome=Outcome.REFUSED, reason=_form_errors(form, formsets),
                          object_type_=self._type())
        return super().render_change_form(request, context, add=add, change=change, form_url=form_url, obj=obj)

    def delete_model(self, request, obj):
        before = _queued(request)
        pk, text = obj.pk, str(obj)
        super().delete_model(request, obj)
        problems = _new_problems(request, before)
        events.record(f"{self._type()}.delete", outcome=Outcome.REFUSED if problems else Outcome.ACCEPTED,
                      reason="; ".join(problems), object_type_=self._type(), object_id=pk, object_repr=text)

    def delete_queryset(self, request, queryset):
        for obj in queryset:  # one event per object, each through delete_model
            self.delete_model(request, obj)

    def render_delete_form(self, request, context):
        obj = context.get("object")
        if request.method == "POST" and context.get("protected") and obj is not None:
            events.record(f"{self._type()}.delete", obj, outcome=Outcome.REFUSED,
                          reason="; ".join(map(str, context["protected"])))
        return super().render_delete_form(request, context)

    def get_actions(self, request):
        actions = super().get_actions(request)
        for name, verb in self.audit_actions.items():
            if name in actions:
                func, action_name, description = actions[name]
                actions[name] = (_audited_action(func, f"{self._type()}.{verb}"), action_name, description)
        return actions


def _audited_action(func, action):
    """An admin action run object by object, each recorded: refused when the admin warned of it."""

    def run(modeladmin, request, queryset):
        for obj in queryset:
            before = _queued(request)
            func(modeladmin, request, queryset.model._default_manager.filter(pk=obj.pk))
            problems = _new_problems(request, before)
            events.record(action, obj, outcome=Outcome.REFUSED if problems else Outcome.ACCEPTED,
                          reason="; ".join(problems))

    for attr in ("allowed_permissions", "short_description"):
        if hasattr(func, attr):
            setattr(run, attr, getattr(func, attr))
    return run


def audit_registered_admins(site=admin.site) -> None:
    """Mix AuditedAdmin into the registered admins of AUDITED (once)."""
    for model, model_admin in list(site._registry.items()):
        label = model._meta.label_lower
        if label not in AUDITED or isinstance(model_admin, AuditedAdmin):
            continue
        cls = type(f"Audited{type(model_admin).__name__}", (AuditedAdmin, type(model_admin)),
                   {"audit_actions": AUDITED[label], "__module__": __name__})
        site.unregister(model)
        site.register(model, cls)


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    """Read-only: nobody adds, changes or deletes an event through the admin, superusers included."""

    list_display = ["when", "username", "source", "action", "object_type", "object_id", "object_repr", "outcome",
                    "request_id"]
    list_filter = ["source", "outcome", "action", "object_type"]
    search_fields = ["username", "object_repr", "object_id", "request_id", "reason"]
    date_hierarchy = "when"
    readonly_fields = [f.name for f in Event._meta.fields]
    actions = None

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
