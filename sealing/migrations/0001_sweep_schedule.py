from django.db import migrations


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.get_or_create(
        name="vmseal-sweep",
        defaults={"func": "sealing.tasks.sweep", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="vmseal-sweep").delete()


class Migration(migrations.Migration):
    dependencies = [("django_q", "0018_task_success_index")]
    operations = [migrations.RunPython(create, remove)]
