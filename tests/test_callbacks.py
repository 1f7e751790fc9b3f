"""POST /api/callbacks/: only fresh, correctly signed, first-time notifications about a host's own jobs
change anything."""

import json
import time
import uuid

import pytest

from hostjobs.callbacks import sign
from hostjobs.models import CallbackNonce, Host, HostJob, JobAction
from tests.utils.users import user_with


@pytest.fixture
def hosts(host, other_host):
    return host, other_host


@pytest.fixture
def running_job(host_job):
    """A running job of ``hosts[0]``."""
    return host_job


def post(client, payload, secret, *, ts=None, nonce=None, sig=None, body=None):
    body = body if body is not None else json.dumps(payload).encode()
    ts = str(int(time.time())) if ts is None else ts
    nonce = nonce or uuid.uuid4().hex
    sig = sig if sig is not None else sign(secret, body, ts, nonce)
    return client.post("/api/callbacks/", body, content_type="application/json",
                       HTTP_X_VMSEAL_TIMESTAMP=ts, HTTP_X_VMSEAL_NONCE=nonce, HTTP_X_VMSEAL_SIGNATURE=sig)


def done(job, host):
    return {"kind": "job", "job": str(job.pk), "host": host.pk, "status": "done", "exit_code": 0,
            "result": {"id": "x"}, "error": ""}


def status(job):
    return HostJob.objects.get(pk=job.pk).status


def test_a_signed_notification_completes_the_job_once(client, hosts, running_job):
    a = hosts[0]
    r = post(client, done(running_job, a), a.callback_secret)
    assert r.status_code == 200
    assert status(running_job) == "done"
    assert HostJob.objects.get(pk=running_job.pk).result == {"id": "x"}
    again = post(client, {**done(running_job, a), "status": "failed"}, a.callback_secret)
    assert again.status_code == 200, "a late or repeated notification is accepted and ignored"
    assert status(running_job) == "done"


def test_a_pushed_end_with_the_whole_log_replaces_the_log_and_marks_the_host_cleared(client, hosts, running_job):
    a = hosts[0]
    HostJob.objects.filter(pk=running_job.pk).update(log="partial\n", log_offset=8)
    r = post(client, {**done(running_job, a), "log": "partial\nwhole log\n", "log_offset": 18,
                      "log_complete": True}, a.callback_secret)
    assert r.status_code == 200
    job = HostJob.objects.get(pk=running_job.pk)
    assert (job.status, job.log, job.log_offset, job.host_cleared) == ("done", "partial\nwhole log\n", 18, True)
    other = HostJob.create(a, JobAction.COPY)
    other.start()
    r = post(client, {**done(other, a), "status": "failed", "log": "x", "log_offset": 1, "log_complete": True},
             a.callback_secret)
    assert r.status_code == 200
    assert HostJob.objects.get(pk=other.pk).host_cleared is False, "only a done job's log is taken as complete"


@pytest.mark.parametrize("forge", ["unsigned", "wrong_secret", "tampered_body", "stale", "future"])
def test_forged_notifications_are_refused_and_change_nothing(client, hosts, running_job, forge):
    a = hosts[0]
    payload = done(running_job, a)
    kwargs = {}
    if forge == "unsigned":
        r = client.post("/api/callbacks/", json.dumps(payload), content_type="application/json")
    else:
        if forge == "wrong_secret":
            kwargs["sig"] = sign("0" * 64, json.dumps(payload).encode(), str(int(time.time())), "n1")
            kwargs["nonce"] = "n1"
        elif forge == "tampered_body":
            ts, nonce = str(int(time.time())), "n2"
            kwargs.update(ts=ts, nonce=nonce, sig=sign(a.callback_secret, json.dumps(payload).encode(), ts, nonce),
                          body=json.dumps({**payload, "status": "failed"}).encode())
        elif forge == "stale":
            kwargs["ts"] = str(int(time.time()) - 3600)
        elif forge == "future":
            kwargs["ts"] = str(int(time.time()) + 3600)
        r = post(client, payload, a.callback_secret, **kwargs)
    assert r.status_code == 401
    assert status(running_job) == "running"
    assert CallbackNonce.objects.count() == 0


def test_a_replayed_notification_is_refused(client, hosts, running_job):
    a = hosts[0]
    payload = {**done(running_job, a), "status": "running"}
    ts, nonce = str(int(time.time())), uuid.uuid4().hex
    assert post(client, payload, a.callback_secret, ts=ts, nonce=nonce).status_code == 200
    r = post(client, done(running_job, a), a.callback_secret, ts=ts, nonce=nonce)
    assert r.status_code == 409, "a nonce is good once, whatever the body"
    assert status(running_job) == "running"
    body = json.dumps(done(running_job, a)).encode()
    ts2, n2 = str(int(time.time())), uuid.uuid4().hex
    first = post(client, None, a.callback_secret, ts=ts2, nonce=n2, body=body)
    assert first.status_code == 200
    replay = post(client, None, a.callback_secret, ts=ts2, nonce=n2, body=body)
    assert replay.status_code == 409


def test_a_host_cannot_report_on_another_hosts_job(client, hosts, running_job):
    a, b = hosts
    r = post(client, {**done(running_job, a), "host": b.pk}, b.callback_secret)
    assert r.status_code == 404
    assert status(running_job) == "running"


def test_unknown_jobs_and_kinds_are_refused(client, hosts):
    a = hosts[0]
    r = post(client, {"kind": "job", "job": str(uuid.uuid4()), "host": a.pk, "status": "done"}, a.callback_secret)
    assert r.status_code == 404
    r = post(client, {"kind": "bogus", "host": a.pk}, a.callback_secret)
    assert r.status_code == 400


def test_the_secret_is_never_in_the_api(admin_client, hosts):
    body = admin_client.get(f"/api/hosts/{hosts[0].pk}/").content.decode()
    assert hosts[0].callback_secret not in body
    assert "callback_secret" not in body


def test_cancel_api(admin_client, hosts, running_job, client):
    reader = user_with("reader")
    client.force_login(reader)
    assert client.post(f"/api/jobs/{running_job.pk}/cancel/").status_code == 403
    assert status(running_job) == "running"
    r = admin_client.post(f"/api/jobs/{running_job.pk}/cancel/")
    assert r.status_code == 202
    assert r.json()["status"] == "aborting"
    assert admin_client.post(f"/api/jobs/{running_job.pk}/cancel/").status_code == 409


@pytest.mark.parametrize(("header", "value"), [
    ("sig", "é" * 64),                  # non-ASCII (a WSGI server hands headers over as latin-1)
    ("sig", "\u0661" * 64),             # non-ASCII digits
    ("sig", "zz"),                      # not hex
    ("sig", "A" * 64),                  # not what sign() makes
    ("ts", "\u00b2"),                   # isdigit(), but not a number int() reads
    ("ts", "\u0661\u0662\u0663"),       # Arabic-Indic digits
    ("nonce", "n\u00e9"),
    ("nonce", "x" * 65),
])
def test_malformed_signature_headers_are_a_401_not_a_500(client, hosts, running_job, header, value):
    a = hosts[0]
    r = post(client, done(running_job, a), a.callback_secret, **{header: value})
    assert r.status_code == 401, r.content
    assert r.json() == {"detail": "not signed by a known host"}
    assert status(running_job) == "running"
    assert CallbackNonce.objects.count() == 0


def test_an_unknown_host_and_a_bad_signature_get_the_same_answer(client, hosts, running_job):
    """The endpoint does not tell which host ids exist."""
    a = hosts[0]
    missing = max(Host.objects.values_list("pk", flat=True)) + 100
    answers = []
    for payload, secret in [({**done(running_job, a), "host": missing}, a.callback_secret),  # unknown host
                            (done(running_job, a), "0" * 64),                                # bad signature
                            ({**done(running_job, a), "host": "x"}, a.callback_secret),      # not a host id
                            ({**done(running_job, a), "host": 10**30}, a.callback_secret)]:  # out of range
        r = post(client, payload, secret)
        answers.append((r.status_code, r.content))
    assert answers == [(401, b'{"detail": "not signed by a known host"}')] * 4
    assert status(running_job) == "running"
    assert CallbackNonce.objects.count() == 0


@pytest.mark.django_db
def test_old_nonces_are_forgotten_by_hostjobs_own_scheduled_task(host):
    from datetime import timedelta

    from django.utils import timezone
    from django_q.models import Schedule

    from hostjobs.callbacks import MAX_SKEW
    from hostjobs.tasks import forget_old_nonces

    old = CallbackNonce.objects.create(host=host, nonce="old")
    CallbackNonce.objects.filter(pk=old.pk).update(received=timezone.now() - timedelta(seconds=2 * MAX_SKEW + 5))
    CallbackNonce.objects.create(host=host, nonce="fresh")
    assert forget_old_nonces() == 1
    assert list(CallbackNonce.objects.values_list("nonce", flat=True)) == ["fresh"]
    schedule = Schedule.objects.get(name="vmseal-forget-nonces")  # made by hostjobs' migration 0007
    assert (schedule.func, schedule.schedule_type, schedule.repeats) == ("hostjobs.tasks.forget_old_nonces",
                                                                         Schedule.MINUTES, -1)
