"""The admin's "New VM" form. It collects what POST /api/vms/ takes; the Vm model validates it
(``Vm.full_clean``), the same rules as the API's and the CLI's."""

from django import forms
from django.core.exceptions import ValidationError

from hostjobs.models import Host
from templates.models import Template
from vms.models import Clone, Vm


class NewVmForm(forms.Form):
    template = forms.ModelChoiceField(queryset=Template.objects.filter(status="ok").order_by("name"))
    name = forms.CharField(max_length=63, help_text="the libvirt domain's name: letters, digits, '.', '_', '-'")
    host = forms.ModelChoiceField(queryset=Host.objects.all(), required=False,
                                  help_text="blank: the template's host (the only one for now)")
    clone = forms.ChoiceField(choices=Clone.choices, initial=Clone.THIN,
                              help_text="thin: its disks are overlays on the template's volumes (fast; the template "
                                        "cannot be deleted while the VM exists); full: independent copies")
    hostname = forms.CharField(max_length=253, required=False, strip=False,
                               help_text="the guest's host name; blank: the VM's name")
    ssh_authorized_keys = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), required=False, strip=False,
                                          help_text="public keys for root, one per line")
    root_password_hash = forms.CharField(widget=forms.PasswordInput(render_value=False), required=False, strip=False,
                                         help_text="a crypt(3) hash ('$6$...', openssl passwd -6), never a password; "
                                                   "not shown again")
    start = forms.BooleanField(required=False, help_text="start the VM once it is defined")

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        keys = [k for k in (data.get("ssh_authorized_keys") or "").splitlines() if k.strip()]
        t = data["template"]
        vm = Vm(name=data["name"], template=t, host=data.get("host") or t.host, clone=data["clone"],
                hostname=data.get("hostname") or "", ssh_authorized_keys=keys,
                root_password_hash=data.get("root_password_hash") or "", start=data.get("start", False))
        try:
            vm.full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as e:
            for field, messages in e.message_dict.items():
                self.add_error(field if field in self.fields else None, messages)
            return data
        data["vm"] = vm
        return data
