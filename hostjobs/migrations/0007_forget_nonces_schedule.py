from django.db import migrations


def create(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.get_or_create(
        name="vmseal-forget-nonces",
        defaults={"func": "hostjobs.tasks.forget_old_nonces", "schedule_type": "I", "minutes": 1, "repeats": -1},
    )


def remove(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name="vmseal-forget-nonces").delete()


class Migration(migrations.Migration):
    dependencies = [("hostjobs", "0006_host_field_validators"), ("django_q", "0018_task_success_index")]
    operations = [migrations.RunPython(create, remove)]
