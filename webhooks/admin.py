from django import forms
from django.contrib import admin

from audit.admin import AuditedAdmin
from webhooks.models import EVENTS, Delivery, Webhook


class WebhookForm(forms.ModelForm):
    """The secret is written, never shown: blank on a change keeps the stored one."""

    secret = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False, strip=False,
                             help_text="at least 16 characters; signs each POST. Leave blank to keep the current one.")
    events = forms.MultipleChoiceField(choices=list(EVENTS.items()), widget=forms.CheckboxSelectMultiple)

    class Meta:
        model = Webhook
        fields = ["name", "url", "events", "secret", "active"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk is None:
            self.fields["secret"].required = True

    def clean_secret(self):
        value = self.cleaned_data.get("secret")
        return value if value else self.instance.secret


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    can_delete = False
    fields = ["event", "status", "tries", "last_status", "last_error", "created", "last_try", "next_try", "delivered"]
    readonly_fields = fields
    ordering = ["-created"]
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Webhook)
class WebhookAdmin(AuditedAdmin, admin.ModelAdmin):
    form = WebhookForm
    list_display = ["name", "url", "shown_events", "active", "created"]
    list_filter = ["active"]
    search_fields = ["name", "url"]
    inlines = [DeliveryInline]

    @admin.display(description="events")
    def shown_events(self, obj):
        return ", ".join(obj.events or [])


@admin.register(Delivery)
class DeliveryAdmin(admin.ModelAdmin):
    """What was sent where and how it went: read-only."""

    list_display = ["created", "event", "webhook", "status", "tries", "last_status", "last_error", "delivered"]
    list_filter = ["status", "event", "webhook"]
    readonly_fields = [f.name for f in Delivery._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
