from django import forms

from sealing import options, service
from templates.models import Template


def _lines(value: str) -> list[str]:
    return [ln.strip() for ln in (value or "").splitlines() if ln.strip()]


def _words(value: str) -> list[str]:
    return [w for w in (value or "").replace(",", " ").split() if w]


class NewTemplateForm(forms.ModelForm):
    """Django admin's New Template dialog: host, VM, name, description, **Seal template**, and the seal
    options (validated exactly as the API's ``seal_options``)."""

    hostname = forms.CharField(required=False, help_text="Host name for VMs made from it (default: localhost).")
    timezone = forms.CharField(required=False, help_text="e.g. Europe/Berlin")
    root_password = forms.CharField(required=False, widget=forms.PasswordInput,
                                    help_text="Stored only as a hash; never shown again.")
    ssh_user = forms.CharField(required=False, label="SSH key user")
    ssh_key = forms.CharField(required=False, label="SSH public key", widget=forms.Textarea(attrs={"rows": 2}))
    firstboot_commands = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                         help_text="One command per line, run once at the first boot.")
    operations_add = forms.CharField(required=False, help_text="virt-sysprep operations to add (comma-separated)")
    operations_remove = forms.CharField(required=False, help_text="virt-sysprep operations to skip")
    remove_user_accounts = forms.CharField(required=False)

    option_fields = ["hostname", "timezone", "root_password", "ssh_user", "ssh_key", "firstboot_commands",
                     "operations_add", "operations_remove", "remove_user_accounts"]

    class Meta:
        model = Template
        fields = ["host", "vm_name", "name", "description", "seal"]
        widgets = {"vm_name": forms.TextInput(attrs={"list": "vmseal-vms", "autocomplete": "off"})}
        help_texts = {"seal": "Erase SSH host keys, machine-id, MAC pinning, hostname, logs and history "
                              "with virt-sysprep. Linux guests only."}

    class Media:
        js = ["templates/new_template.js"]

    def _seal_options(self, data) -> dict:
        raw = {
            "hostname": data.get("hostname"), "timezone": data.get("timezone"),
            "root_password": data.get("root_password"),
            "firstboot_commands": _lines(data.get("firstboot_commands")),
            "operations_add": _words(data.get("operations_add")),
            "operations_remove": _words(data.get("operations_remove")),
            "remove_user_accounts": _words(data.get("remove_user_accounts")),
        }
        if data.get("ssh_key") or data.get("ssh_user"):
            raw["ssh_keys"] = [{"user": data.get("ssh_user") or "", "key": data.get("ssh_key") or ""}]
        return {k: v for k, v in raw.items() if v}

    may_seal = True  # set by the admin from the user's permissions

    def clean(self):
        data = super().clean()
        if data.get("seal") and not self.may_seal:
            self.add_error("seal", "you may not create sealed templates")
        raw = self._seal_options(data)
        if raw and not data.get("seal"):
            self.add_error("seal", "seal options need Seal template")
        ser = options.SealOptionsSerializer(data=raw)
        if not ser.is_valid():
            for field, errors in ser.errors.items():
                target = {"ssh_keys": "ssh_key"}.get(field, field)
                self.add_error(target if target in self.fields else None, "; ".join(map(str, errors)))
            return data
        host, vm = data.get("host"), data.get("vm_name")
        if host and vm and not self.errors:
            try:
                service.validate_source(host, vm)
                service.check_seal_options(host, ser.validated_data)
            except service.Refused as e:
                field = {"vm": "vm_name"}.get(e.field, e.field)
                self.add_error(field if field in self.fields else None, str(e.message))
            else:
                self.instance.seal_options = ser.to_stored()
        return data
