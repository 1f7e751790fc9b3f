"""GET /metrics scraped from the app's real web process (the one the test host pushes job ends to) while
a real seal runs on a real test host: the counts move as the job goes, and the callbacks that web process
accepted are counted."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.utils.jobs import wait_jobs

pytestmark = pytest.mark.e2e

HOST = "e2m1"


def parse(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def v(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class Scraper:
    """GET /metrics every 0.3 s from another thread, as Prometheus would, keeping every answer."""

    def __init__(self, url: str, token: str):
        self.url, self.token, self.samples, self.errors = url, token, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def scrape(self) -> dict[tuple, float]:
        req = urllib.request.Request(self.url, headers={"Authorization": f"Token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            return parse(r.read().decode())

    def _run(self):
        while not self._stop.wait(0.3):
            try:
                self.samples.append(self.scrape())
            except Exception as e:  # noqa: BLE001 - recorded, and the test fails on it
                self.errors.append(repr(e))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def sealed(test_host, qcluster, callback_server, django_db_blocker):
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from hostjobs import transport
    from hostjobs.models import Host
    from hostjobs.tasks import check_host
    from tests.utils.users import user_with

    with django_db_blocker.unblock():
        from django.contrib.auth import get_user_model

        admin = get_user_model().objects.create_superuser("e2m", "e2m@example.test", "e2m-pass-1")
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin).key}")
        reader = Token.objects.create(user=user_with("e2m-prom", "view_metrics")).key
        nobody = Token.objects.create(user=user_with("e2m-nobody")).key
        r = api.post("/api/hosts/", {"name": HOST, "address": test_host.address, "ssh_user": "root",
                                     "host_key": test_host.host_key, "guestfs_backend_settings": "force_tcg",
                                     "max_parallel_seals": 1, "pool_path": "/var/lib/vmseal/metrics",
                                     "vm_pool_path": "/var/lib/vmseal/metrics-vms"}, format="json")
        assert r.status_code == 201, r.content
        host_id = r.json()["id"]
        call_command("host_install", HOST)
        test_host.define_vm("metrics1", "one")
        base = callback_server.rsplit("/api/callbacks/", 1)[0]
        scraper = Scraper(f"{base}/metrics", reader)
        before = scraper.scrape()
        check_host(host_id)  # a real host check over SSH: reachable, pool free bytes
        checked = scraper.scrape()
        with scraper:
            posted = api.post("/api/templates/", {"name": "tpl-metrics", "vm": "metrics1", "seal": True,
                                                  "host": host_id, "description": "e2e metrics"}, format="json")
            assert posted.status_code == 202, posted.content
            job = wait_jobs(api, [posted.json()["id"]])[posted.json()["id"]]
            time.sleep(0.7)  # one more scrape after the end
        after = scraper.scrape()
        refused = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Token {nobody}"})
        try:
            urllib.request.urlopen(refused, timeout=10)
            refused_status = 200
        except urllib.error.HTTPError as e:
            refused_status = e.code
        try:
            yield {"before": before, "checked": checked, "during": scraper.samples, "errors": scraper.errors,
                   "after": after, "job": job, "refused_status": refused_status}
        finally:
            for h in Host.objects.all():
                transport.close(h)


def test_the_seal_ended_well(sealed):
    assert sealed["job"]["status"] == "done", sealed["job"]["error"]
    assert not sealed["errors"], sealed["errors"][:3]
    assert len(sealed["during"]) >= 10, "scraped all along the seal"


def test_a_token_without_the_permission_is_refused_by_the_real_web_process(sealed):
    assert sealed["refused_status"] == 403


def test_the_host_check_shows_the_host_reachable_with_its_pool_free_space(sealed):
    s = sealed["checked"]
    assert v(s, "vmseal_host_reachable", host=HOST) == 1
    assert v(s, "vmseal_host_pool_free_bytes", host=HOST) > 0
    assert v(s, "vmseal_seal_slots", host=HOST) == 1
    assert ("vmseal_host_reachable", (("host", HOST),)) not in sealed["before"], "never checked: not shown"


def test_the_counts_move_as_the_job_goes(sealed):
    before, during, after = sealed["before"], sealed["during"], sealed["after"]
    locked0 = v(before, "vmseal_templates", status="locked")
    ok0 = v(before, "vmseal_templates", status="ok")
    # while it ran: the template locked, its operation running, at some point the seal holding the host's slot
    assert any(v(s, "vmseal_templates", status="locked") == locked0 + 1 for s in during)
    assert any(v(s, "vmseal_jobs_running", kind="operation", action="create_template") >= 1 for s in during)
    sealing = [s for s in during if v(s, "vmseal_jobs_running", kind="virt", action="seal") == 1]
    assert sealing, "a scrape saw the seal running"
    assert all(v(s, "vmseal_seal_slots_in_use", host=HOST) == 1 for s in sealing)
    # the order: the copy finished before the seal started, the seal before the template was ok
    first_seal = next(i for i, s in enumerate(during) if v(s, "vmseal_jobs_running", kind="virt", action="seal"))
    assert v(during[first_seal], "vmseal_job_duration_seconds_count", kind="storage", action="copy", status="done") \
        > v(before, "vmseal_job_duration_seconds_count", kind="storage", action="copy", status="done")
    assert v(during[first_seal], "vmseal_templates", status="ok") == ok0
    # after: ok, nothing running, the slot free, the finished jobs in the duration histogram
    assert v(after, "vmseal_templates", status="ok") == ok0 + 1
    assert v(after, "vmseal_templates", status="locked") == locked0
    assert v(after, "vmseal_seal_slots_in_use", host=HOST) == 0
    assert v(after, "vmseal_jobs_running", kind="virt", action="seal") == 0
    assert v(after, "vmseal_jobs_running", kind="operation", action="create_template") == 0

    def finished(s, kind, action):
        return v(s, "vmseal_job_duration_seconds_count", kind=kind, action=action, status="done")

    assert finished(after, "virt", "seal") == finished(before, "virt", "seal") + 1
    assert finished(after, "operation", "create_template") == finished(before, "operation", "create_template") + 1
    assert finished(after, "storage", "copy") == finished(before, "storage", "copy") + 1  # one disk
    took = (v(after, "vmseal_job_duration_seconds_sum", kind="virt", action="seal", status="done")
            - v(before, "vmseal_job_duration_seconds_sum", kind="virt", action="seal", status="done"))
    assert 1 < took < 900, "a real seal's run time (an appliance launch under TCG)"


def test_the_job_ends_the_host_pushed_were_counted_by_the_web_process_that_took_them(sealed):
    moved = (v(sealed["after"], "vmseal_callbacks_accepted_total", kind="job")
             - v(sealed["before"], "vmseal_callbacks_accepted_total", kind="job"))
    assert moved >= 3, "the copy's, the seal's and the storage jobs' ends were pushed, not polled"
