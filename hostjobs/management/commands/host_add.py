from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from hostjobs.models import Host


class Command(BaseCommand):
    help = "Register a hypervisor host (its SSH host key is pinned)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("address")
        parser.add_argument("--port", type=int, default=22)
        parser.add_argument("--user", default="root")
        key = parser.add_mutually_exclusive_group(required=True)
        key.add_argument("--host-key", help="the host's public key line")
        key.add_argument("--host-key-file", help="a copy of the host's /etc/ssh/ssh_host_*_key.pub")
        parser.add_argument("--pool-path", default="/var/lib/vmseal/templates")
        parser.add_argument("--guestfs-backend-settings", default="", help="e.g. force_tcg where KVM is unusable")
        parser.add_argument("--callback-url", default="")

    def handle(self, *args, **o):
        key = o["host_key"] or Path(o["host_key_file"]).read_text().strip()
        host = Host(name=o["name"], address=o["address"], port=o["port"], ssh_user=o["user"], host_key=key,
                    pool_path=o["pool_path"], guestfs_backend_settings=o["guestfs_backend_settings"],
                    callback_url=o["callback_url"])
        try:
            host.full_clean()  # the model's validation, as the API's and the admin's
        except ValidationError as e:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in e.message_dict.items())) from None
        host.save()
        self.stdout.write(f"host {host.name} (id {host.pk}) added; add `manage.py vmseal_pubkey` to its "
                          "authorized_keys, then run `manage.py host_install " + host.name + "`")
