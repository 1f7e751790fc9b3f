from datetime import timedelta

from django.conf import settings
from django.db import migrations
from django.utils import timezone


def create(apps, schema_editor):
    minutes = settings.VMSEAL_HOST_SCAN_MINUTES
    if not minutes:
        return
    apps.get_model("django_q", "Schedule").objects.get_or_create(
        name="vmseal-host-scan",
        defaults={"func": "sealing.tasks.scan_hosts", "schedule_type": "I", "minutes": minutes, "repeats": -1,
                  "next_run": timezone.now() + timedelta(minutes=minutes)},
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="vmseal-host-scan").delete()


class Migration(migrations.Migration):
    dependencies = [("sealing", "0001_sweep_schedule")]
    operations = [migrations.RunPython(create, remove)]
