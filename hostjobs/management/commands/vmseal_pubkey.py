from django.core.management.base import BaseCommand

from hostjobs.transport import app_public_key


class Command(BaseCommand):
    help = "Print vmseal's SSH public key (generated on first use), for each host's authorized_keys."

    def handle(self, *args, **options):
        self.stdout.write(app_public_key())
