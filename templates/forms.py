from django import forms

from sealing import service
from templates.models import Template


class NewTemplateForm(forms.ModelForm):
    """Django admin's New Template dialog: host, VM, name, description and **Seal template**."""

    class Meta:
        model = Template
        fields = ["host", "vm_name", "name", "description", "seal"]
        help_texts = {"seal": "Erase SSH host keys, machine-id, MAC pinning, hostname, logs and history "
                              "with virt-sysprep. Linux guests only."}

    def clean(self):
        data = super().clean()
        host, vm = data.get("host"), data.get("vm_name")
        if host and vm and not self.errors:
            try:
                service.validate_source(host, vm)
            except service.Refused as e:
                self.add_error("vm_name" if e.field == "vm" else e.field if e.field in self.fields else None,
                               e.message)
        return data
