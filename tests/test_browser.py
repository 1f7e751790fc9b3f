"""An admin seals a VM in a real browser (Debian's headless Chromium, driven by Playwright) against the
app's real server process, a real qcluster and a real test host. Saves a screenshot of the finished
template page to test-artifacts/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.browser]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_setup(test_host, qcluster, callback_server, django_db_blocker):
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from hostjobs.models import Host

    with django_db_blocker.unblock():
        User.objects.create_superuser("browser", "b@example.test", "browser-pass-1")
        host = Host.objects.create(name="browser-host", address=test_host.address, host_key=test_host.host_key,
                                   pool_path="/var/lib/vmseal/browser", guestfs_backend_settings="force_tcg")
        call_command("host_install", "browser-host")
    test_host.define_vm("demo-vm", "one")
    yield host, callback_server.rsplit("/api/", 1)[0]
    test_host.virsh("undefine", "demo-vm", check=False)


def test_admin_creates_a_sealed_template_in_the_browser(browser_setup, django_db_blocker):
    from playwright.sync_api import expect, sync_playwright

    from templates.models import Template

    host, base = browser_setup
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(f"{base}/admin/login/?next=/admin/templates/template/add/")
            page.fill("#id_username", "browser")
            page.fill("#id_password", "browser-pass-1")
            page.click("input[type=submit]")
            expect(page.locator("label[for=id_seal]")).to_contain_text("Seal template")
            page.select_option("#id_host", str(host.pk))
            # the host's shut-off VMs, read live from libvirt
            expect(page.locator("#vmseal-vms-note")).to_contain_text("demo-vm", timeout=30_000)
            page.fill("#id_vm_name", "demo-vm")
            page.fill("#id_name", "browser-template")
            page.fill("#id_description", "made in a browser")
            page.check("#id_seal")
            page.click("input[name=_save]")
            expect(page.locator("ul.messagelist")).to_contain_text("is being created", timeout=30_000)
            page.locator("#result_list").get_by_role("link", name="browser-template").click()  # list -> its page
            expect(page.locator("#vmseal-job-status")).to_be_visible()
            # the page follows the job without a reload, then reloads once it ended
            deadline = time.monotonic() + 420
            while time.monotonic() < deadline:
                status = page.locator("#vmseal-job-status")
                if status.count() and status.inner_text() == "done":
                    break
                page.wait_for_timeout(2000)
            page.wait_for_load_state()
            expect(page.locator("#vmseal-job-status")).to_have_text("done", timeout=60_000)
            expect(page.locator(".field-audit_report")).to_contain_text("ssh host keys")
            expect(page.locator(".field-audit_report")).not_to_contain_text("FAILED")
            expect(page.locator(".field-status")).to_contain_text("OK")
            page.screenshot(path=str(ARTIFACTS / "template-page.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
    with django_db_blocker.unblock():
        t = Template.objects.get(name="browser-template")
        assert t.status == "ok"
        assert t.sealed
        assert t.audit["passed"]
    assert (ARTIFACTS / "template-page.png").stat().st_size > 10_000
