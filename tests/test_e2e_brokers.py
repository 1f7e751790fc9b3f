"""Production broker: two ``manage.py qcluster`` processes against one Redis broker share the template
flows without running any of them (or any host job) twice. Runs in the PostgreSQL + Redis pass of
``scripts/test`` (skipped on the default ORM broker)."""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.fixtures.services import Service
from tests.utils.jobs import wait_jobs
from tests.utils.paths import ROOT

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not os.environ.get("VMSEAL_REDIS_URL"), reason="needs the Redis broker (PostgreSQL pass)"),
]
FLOWS = 8


def test_two_clusters_on_one_redis_broker_share_the_flows_and_run_each_once(test_host, test_env, qcluster,
                                                                            callback_server, django_db_blocker):
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    from hostjobs import transport
    from hostjobs.models import Host, HostJob

    qcluster.stop()  # the session's cluster would be a third consumer
    logs = [f"qcluster-broker-{i}-{os.getpid()}.log" for i in (1, 2)]
    for name in logs:
        (ROOT / "var" / name).unlink(missing_ok=True)
    clusters = [Service(["qcluster"], {**test_env, "VMSEAL_Q_WORKERS": "2"}, name).start() for name in logs]
    try:
        with django_db_blocker.unblock():
            api = APIClient()
            api.force_authenticate(User.objects.create_superuser("broker", "b@example.test", "broker-pass-1"))
            r = api.post("/api/hosts/", {"name": "broker1", "address": test_host.address,
                                         "host_key": test_host.host_key, "pool_path": "/var/lib/vmseal/broker"},
                         format="json")
            assert r.status_code == 201, r.content
            host = Host.objects.get(pk=r.json()["id"])
            test_host.define_vm("shared2", "two")
            time.sleep(3)  # both clusters up and polling the broker
            posted = [api.post("/api/templates/", {"name": f"shared-{i}", "host": host.pk, "vm": "shared2",
                                                   "seal": False}, format="json") for i in range(FLOWS)]
            assert all(p.status_code == 202 for p in posted), [p.content for p in posted]
            jobs = wait_jobs(api, [p.json()["id"] for p in posted], timeout=300)
            assert all(j["status"] == "done" for j in jobs.values()), [j["error"] for j in jobs.values()]
            for j in jobs.values():  # each flow's host jobs ran once: 2 copies, then 2 update_volume
                assert sorted(c["action"] for c in j["children"]) == ["copy", "copy", "update_volume",
                                                                      "update_volume"]
            children = HostJob.objects.filter(host=host, parent__isnull=False)
            assert children.count() == FLOWS * 4
            assert children.filter(status="done").count() == FLOWS * 4
            pool = test_host.pool_files("/var/lib/vmseal/broker")
            assert len([n for n in pool if n.endswith(".qcow2")]) == FLOWS * 2, "one copy per disk, none twice"
            transport.close(host)
    finally:
        for c in clusters:
            c.stop()
        qcluster.start()
    # Which cluster ran what: django-q2 logs "processing '<task name>'" in the cluster that took it.
    ran = {}
    for name in logs:
        text = (ROOT / "var" / name).read_text()
        ran[name] = re.findall(r"processing '?\[?(template-\d+-[0-9a-f-]+)", text)
    every = [t for names in ran.values() for t in names]
    assert len(every) == FLOWS, ran
    assert len(set(every)) == FLOWS, f"a flow ran twice: {ran}"
    assert all(ran.values()), f"both clusters took work: {ran}"
