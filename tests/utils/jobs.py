"""Waiting on jobs through the API, and the scheduled tasks the migrations make."""

import time

TERMINAL = {"done", "failed", "aborted"}


# The django-q2 schedules vmseal's migrations make. A transactional test's flush removes every row of the
# test database, those too: ensure_schedules() makes them again with the migrations' own code.
SCHEDULE_MIGRATIONS = ("sealing.migrations.0001_sweep_schedule", "sealing.migrations.0002_host_scan_schedule",
                       "hostjobs.migrations.0007_forget_nonces_schedule")


def ensure_schedules(due_now=("vmseal-sweep",)):
    """Every schedule as the migrations make it; those named in ``due_now`` run at once (the sweeper, by
    default: it resumes flows whose worker died)."""
    import importlib

    from django.apps import apps
    from django.utils import timezone
    from django_q.models import Schedule

    for name in SCHEDULE_MIGRATIONS:
        importlib.import_module(name).create(apps, None)
    Schedule.objects.filter(name__in=due_now).update(next_run=timezone.now())


def wait_jobs(api, job_ids, timeout=900):
    """Poll GET /api/jobs/<id>/ until every job is terminal; return their detail bodies."""
    deadline = time.monotonic() + timeout
    pending, done = set(job_ids), {}
    while pending and time.monotonic() < deadline:
        for jid in list(pending):
            body = api.get(f"/api/jobs/{jid}/").json()
            if body["status"] in TERMINAL:
                done[jid] = body
                pending.discard(jid)
        if pending:
            time.sleep(0.5)
    if pending:
        raise AssertionError(f"jobs not terminal after {timeout}s: {sorted(pending)}")
    return done
