"""End to end on a real test host: API -> django-q2 cluster -> SSH/libvirt -> qemu-img + virt-sysprep
on the host -> disks read back with libguestfs.

The expensive part (nine template operations, eight of which boot a libguestfs appliance once each,
then one appliance launch to read every sealed disk) runs once per module, with the operations
overlapping as they would for real users; each test then asserts one property of that shared run.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid

import pytest

from tests.utils.guest import probe
from tests.utils.jobs import wait_jobs

pytestmark = pytest.mark.e2e

PASSWORD = "Sup3r-secret-pw!"
INJECTED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK ops@example"
CUSTOM = {"hostname": "web-01", "timezone": "Europe/Berlin", "root_password": PASSWORD,
          "ssh_keys": [{"user": "alice", "key": INJECTED}], "firstboot_commands": ["touch /root/first-boot-ran"]}
ROOT_FILES = [
    "/etc/NetworkManager/system-connections/eth0.nmconnection", "/etc/network/interfaces",
    "/etc/lvm/devices/system.devices", "/var/lib/systemd/random-seed", "/etc/shadow",
    "/home/alice/.ssh/authorized_keys", "/etc/timezone", "/etc/localtime",
    "/etc/machine-id", "/etc/hostname", "/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub",
    "/etc/ssh/ssh_host_rsa_key", "/etc/udev/rules.d/70-persistent-net.rules", "/root/.bash_history",
    "/home/alice/.bash_history", "/root/notes.txt", "/etc/os-release",
    # on the one-disk guest, /var is on the root disk
    "/var/log/syslog", "/var/log/auth.log", "/var/log/messages", "/var/log/wtmp", "/var/log/lastlog",
    "/var/lib/dhcp/dhclient.eth0.leases", "/var/lib/dbus/machine-id",
]
VAR_FILES = ["/log/syslog", "/log/auth.log", "/log/messages", "/log/wtmp", "/log/lastlog",
             "/lib/dhcp/dhclient.eth0.leases", "/lib/dbus/machine-id"]
LOGS = ["log/syslog", "log/auth.log", "log/messages", "log/wtmp", "log/lastlog"]
MARKER = f"vmseal-host-marker-{uuid.uuid4().hex}"  # what the hostile guest's links point at, on the host
HOSTILE_FILES = ["os-release", "host.nmconnection", "interfaces.d/eth9"]  # under guestdisk.HOSTILE_TARGET


def plant_host_marker(test_host) -> dict[str, str]:
    """Files the hostile guest's symlinks point to, on the test host: a marker file per link and a marker
    directory. Returns path -> "inode sha256"."""
    from tests.fixtures.testhosts import guestdisk

    d = guestdisk.HOSTILE_TARGET
    test_host.exec("mkdir", "-p", f"{d}/interfaces.d")
    content = {
        "os-release": f'PRETTY_NAME="{MARKER}-os"\nID={MARKER}\nVERSION_ID="1"\n',
        "host.nmconnection": f"[connection]\nid={MARKER}-nm\n[ethernet]\nmac-address=52:54:00:aa:bb:cc\n",
        "interfaces.d/eth9": f"iface eth9 inet dhcp\n  hwaddress ether 52:54:00:aa:bb:cd\n# {MARKER}-dir\n",
    }
    for name, text in content.items():
        test_host.exec("sh", "-c", f"cat > {d}/{name}", input=text)
    return host_marker_state(test_host)


def host_marker_state(test_host) -> dict[str, str]:
    from tests.fixtures.testhosts import guestdisk

    paths = [f"{guestdisk.HOSTILE_TARGET}/{n}" for n in HOSTILE_FILES]
    out = test_host.exec("sh", "-c", 'for f in "$@"; do echo "$f $(stat -c %i "$f") $(sha256sum < "$f")"; done',
                         "-", *paths).stdout
    return {line.split()[0]: " ".join(line.split()[1:3]) for line in out.splitlines()}


class ArgvWatch:
    """Reads every process's command line on this machine (test hosts share its pid namespace) every
    0.1 s, remembering any that holds ``needle``, and how many virt-sysprep processes it saw."""

    def __init__(self, needle: str):
        self.needle, self.hits, self.sysprep_seen = needle, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.1):
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = f.read().decode(errors="replace")
                except OSError:
                    continue
                if self.needle in argv:
                    self.hits.append(argv.replace("\0", " ")[:300])
                if argv.startswith("virt-sysprep\0") or "/virt-sysprep\0" in argv:
                    self.sysprep_seen += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def run(test_host, qcluster, django_db_blocker):
    """Register the host, define VMs, request four templates at once, wait, and collect what the API,
    the host's pool and the sealed disks say. Returns plain data."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    from hostjobs import transport
    from hostjobs.models import Host
    from templates.models import Template

    with django_db_blocker.unblock():
        user = User.objects.create_superuser("e2e", "e2e@example.test", "e2e-pass-1")
        api = APIClient()
        token = Token.objects.create(user=user).key
        api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        r = api.post("/api/hosts/", {"name": "e2e1", "address": test_host.address, "ssh_user": "root",
                                     "host_key": test_host.host_key, "guestfs_backend_settings": "force_tcg",
                                     "max_parallel_seals": 2},
                     format="json")
        assert r.status_code == 201, r.content
        host_id = r.json()["id"]
        from django.core.management import call_command

        call_command("host_install", "e2e1")  # the libvirt hooks and the job runner
        sources = {"gold1": test_host.define_vm("gold1", "one"), "gold2": test_host.define_vm("gold2", "two"),
                   "blank1": test_host.define_vm("blank1", "blank"), "win1": test_host.define_vm("win1", "windows"),
                   "gold0": test_host.define_vm("gold0", "noinit"), "evil1": test_host.define_vm("evil1", "hostile")}
        marker_before = plant_host_marker(test_host)
        all_sources = [p for paths in sources.values() for p in paths]
        before = test_host.sha256(all_sources)
        requests = {
            "one": {"name": "tpl-one", "vm": "gold1", "seal": True},
            "two": {"name": "tpl-two", "vm": "gold2", "seal": True},
            "plain": {"name": "tpl-plain", "vm": "gold2", "seal": False},
            "blank": {"name": "tpl-blank", "vm": "blank1", "seal": True},
            "win": {"name": "tpl-win", "vm": "win1", "seal": True},
            "keys": {"name": "tpl-keys", "vm": "gold1", "seal": True,
                     "seal_options": {"operations_remove": ["ssh-hostkeys"]}},
            "custom": {"name": "tpl-custom", "vm": "gold1", "seal": True, "seal_options": CUSTOM},
            # a Linux guest, but virt-sysprep itself fails: the guest has no user "ghost"
            "sealfail": {"name": "tpl-sealfail", "vm": "gold0", "seal": True,
                         "seal_options": {"ssh_keys": [{"user": "ghost", "key": INJECTED}]}},
            # a guest whose os-release, a NetworkManager keyfile and interfaces.d are links to host paths
            "hostile": {"name": "tpl-hostile", "vm": "evil1", "seal": True},
        }
        started = time.monotonic()
        posted = {k: api.post("/api/templates/", {**body, "description": f"e2e {k}", "host": host_id},
                              format="json") for k, body in requests.items()}
        post_seconds = time.monotonic() - started
        for k, resp in posted.items():
            assert resp.status_code == 202, (k, resp.content)
        password_hash = Template.objects.get(name="tpl-custom").seal_options["root_password_hash"]
        with ArgvWatch(password_hash.rsplit("$", 1)[1]) as argv_watch:  # the hash proper, after the salt
            jobs = wait_jobs(api, {k: r.json()["id"] for k, r in posted.items()}.values())
        wall = time.monotonic() - started
        jobs = {k: jobs[r.json()["id"]] for k, r in posted.items()}
        template_ids = {k: int(j["target"].split(":")[1]) for k, j in jobs.items()}
        templates = {k: api.get(f"/api/templates/{tid}/") for k, tid in template_ids.items()}
        volumes = api.get("/api/volumes/?page_size=100").json()["results"]
        pool = test_host.pool_files()
        metas = {name: json.loads(test_host.exec("cat", f"/var/lib/vmseal/templates/{name}").stdout)
                 for name in pool if name.endswith(".meta")}
        after = test_host.sha256(all_sources)
        from hostjobs.models import CallbackNonce

        pushed = CallbackNonce.objects.filter(host_id=host_id).count()

        def vol_paths(key):
            return [d["volume"]["path"] for d in templates[key].json()["disks"]]

        sealed = probe(test_host, vol_paths("one") + vol_paths("two") + vol_paths("custom") + vol_paths("hostile"),
                       ROOT_FILES + VAR_FILES + ["/usr/lib/os-release",
                                                 "/etc/NetworkManager/system-connections/host.nmconnection",
                                                 "/etc/network/interfaces.d"],
                       ["/etc/ssh", "/log", "/var/log", "/usr/lib/virt-sysprep/scripts"])
        marker_after = host_marker_state(test_host)
        marker_in_disks = {p: test_host.exec("grep", "-c", "-a", MARKER, p, check=False).stdout.strip()
                           for p in vol_paths("hostile")}
        from hostjobs.models import HostJob

        every_job_text = [json.dumps([j.log, j.error, j.description, j.result]) for j in HostJob.objects.all()]
        seal_runs = [(j.started, j.completed) for j in HostJob.objects.filter(host_id=host_id, action="seal")]
        op_logs = {k: HostJob.objects.get(pk=j["id"]).log for k, j in jobs.items()}
        every_template = [json.dumps(list(Template.objects.values()), default=str)]
        plain_compare = [
            test_host.exec("qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", src, dst, check=False).returncode
            for src, dst in zip(sources["gold2"], vol_paths("plain"), strict=True)
        ] if templates["plain"].status_code == 200 else None
        try:
            yield {
                "api": api, "host_id": host_id, "jobs": jobs, "templates": templates, "volumes": volumes,
                "pool": pool, "metas": metas, "before": before, "after": after, "sealed": sealed,
                "posted": posted, "paths": {k: vol_paths(k) for k in ("one", "two", "custom", "hostile")},
                "marker_before": marker_before, "marker_after": marker_after, "marker_in_disks": marker_in_disks,
                "argv_watch": argv_watch, "password_hash": password_hash,
                "job_texts": every_job_text, "token": token, "template_rows": every_template,
                "api_texts": [api.get(f"/api/jobs/{j['id']}/").content.decode() for j in jobs.values()]
                + [t.content.decode() for t in templates.values()],
                "plain_compare": plain_compare, "wall": wall, "post_seconds": post_seconds, "pushed": pushed,
                "seal_runs": seal_runs, "op_logs": op_logs,
            }
        finally:
            for h in Host.objects.all():
                transport.close(h)


def test_requests_are_accepted_fast_with_a_job_location(run):
    for key, resp in run["posted"].items():
        body = resp.json()
        assert resp["Location"] == f"/api/jobs/{body['id']}/", key
        assert body["action"] == "create_template"
        assert body["status"] in ("pending", "running")
    assert run["post_seconds"] < 15, "four POSTs must not wait for host work"


def test_sealed_templates_end_ok_and_their_jobs_done(run):
    for key in ("one", "two", "plain", "custom"):
        job, tpl = run["jobs"][key], run["templates"][key].json()
        assert job["status"] == "done", (key, job["error"])
        assert job["progress"] == 100
        assert tpl["status"] == "ok"
        assert tpl["phase"] == "DONE"
    assert run["templates"]["one"].json()["sealed"] is True
    assert run["templates"]["two"].json()["sealed"] is True
    assert run["templates"]["plain"].json()["sealed"] is False


def test_the_hosts_seal_limit_held_and_the_others_waited_then_ran(run):
    """Eight seals asked at once on a host that runs two at a time (Host.max_parallel_seals = 2)."""
    runs = run["seal_runs"]
    assert len(runs) == 8
    assert all(s and e for s, e in runs), "every seal ran to an end"
    events = sorted([(s, 1) for s, _ in runs] + [(e, -1) for _, e in runs], key=lambda ev: (ev[0], ev[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2, f"at most two at once, and the two slots were used: peak {peak}"
    waited = [k for k, text in run["op_logs"].items() if "waiting for a seal slot" in text]
    assert len(waited) >= 5, waited


def test_host_jobs_completion_was_pushed_by_the_host(run):
    host_jobs = sum(len(j["children"]) for j in run["jobs"].values())
    assert host_jobs >= 20
    assert run["pushed"] >= host_jobs, "one signed notification accepted per host job"


def test_job_tree_has_storage_jobs_per_volume_and_one_virt_job(run):
    children = run["jobs"]["two"]["children"]
    by_action = {}
    for c in children:
        by_action.setdefault(c["action"], []).append(c)
        assert c["status"] == "done", c
        assert c["kind"] == ("virt" if c["action"] == "seal" else "storage")
    assert set(by_action) == {"copy", "update_volume", "seal"}
    assert len(by_action["copy"]) == 2
    assert len(by_action["seal"]) == 1  # one virt-sysprep run over all disks: guard and audit inside it
    assert len(by_action["update_volume"]) == 4  # ILLEGAL x2, then LEGAL+SHARED x2
    seal_log = run["api"].get(f"/api/jobs/{by_action['seal'][0]['id']}/").json()["log"]
    assert "virt-sysprep" in seal_log
    assert seal_log.count("--format qcow2 -a ") == 2
    assert seal_log.count("--format raw -a report.img") == 1, "and the report disk, last"
    assert seal_log.count("Examining the guest") == 1, "one appliance launch"
    assert 'Performing "ssh-hostkeys"' in seal_log
    assert 'Performing "script"' not in seal_log, "nothing of vmseal runs over the guest's files on the host"
    runs = [ln for ln in seal_log.splitlines() if "] Running: " in ln]
    assert runs[0].endswith("/guest_prepare.sh"), "the guard is the first customize action, in the guest"
    assert runs[-1].endswith("/guest_audit.sh"), "the audit the last"
    assert seal_log.rindex("guest_audit.sh") > seal_log.rindex('Performing "udev-persistent-net"')
    assert seal_log.index("vmseal: the guest's report:") < seal_log.index("vmseal-guest "), \
        "what the guest is comes from the report disk, after the run"


def test_volumes_are_legal_shared_generation_advanced_and_read_only(run):
    for key, expected_gen in (("one", 2), ("two", 2), ("plain", 1)):
        disks = run["templates"][key].json()["disks"]
        assert len(disks) == {"one": 1, "two": 2, "plain": 2}[key]
        for d in disks:
            v = d["volume"]
            assert (v["type"], v["legality"], v["generation"]) == ("SHARED", "LEGAL", expected_gen), key
            assert v["format"] == "qcow2"
            assert v["size"] > 0
            name = v["path"].rsplit("/", 1)[1]
            assert run["pool"][name] == "400", "a SHARED volume is root's alone and read-only on the host"
            assert run["pool"][name.replace(".qcow2", ".meta")] == "400", "and so is its metadata"
            meta = run["metas"][name.replace(".qcow2", ".meta")]  # the host's truth agrees with the DB
            assert (meta["type"], meta["legality"], meta["generation"]) == ("SHARED", "LEGAL", expected_gen)


def test_identity_is_gone_from_the_one_disk_template(run):
    disk = run["sealed"][run["paths"]["one"][0]]["files"]
    for key in ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_ed25519_key.pub", "/etc/ssh/ssh_host_rsa_key",
                "/etc/udev/rules.d/70-persistent-net.rules", "/root/.bash_history", "/home/alice/.bash_history",
                "/var/lib/dhcp/dhclient.eth0.leases"):
        assert disk[key] is None, key
    assert disk["/etc/hostname"]["head"].strip() == "localhost"
    assert disk["/etc/machine-id"]["size"] == 0
    for log in LOGS:
        assert disk["/var/" + log] is None or disk["/var/" + log]["size"] == 0, log
    assert disk["/root/notes.txt"]["head"] == "kept: not identity\n", "non-identity data is kept"
    assert "debian" in disk["/etc/os-release"]["head"]


def test_identity_is_gone_from_both_disks_of_the_two_disk_template(run):
    root, var = (run["sealed"][p] for p in run["paths"]["two"])
    rf = root["files"]
    assert rf["/etc/ssh/ssh_host_ed25519_key"] is None
    assert rf["/etc/ssh/ssh_host_rsa_key"] is None
    assert root["dirs"]["/etc/ssh"] == []
    assert rf["/etc/udev/rules.d/70-persistent-net.rules"] is None
    assert rf["/root/.bash_history"] is None
    assert rf["/home/alice/.bash_history"] is None
    assert rf["/etc/hostname"]["head"].strip() == "localhost"
    assert rf["/etc/machine-id"]["size"] == 0
    # The /var disk was sealed in the same run: its logs, leases and dbus machine-id are gone too.
    vf = var["files"]
    for log in LOGS:
        assert vf["/" + log] is None or vf["/" + log]["size"] == 0, log
    assert var["dirs"]["/log"] == []
    assert vf["/lib/dhcp/dhclient.eth0.leases"] is None
    assert vf["/lib/dbus/machine-id"] is None or vf["/lib/dbus/machine-id"]["size"] == 0


def test_source_vm_disks_are_unchanged(run):
    assert run["before"] == run["after"]
    assert len(run["before"]) == 7


def test_seal_false_keeps_guest_content_identical(run):
    assert run["plain_compare"] == [0, 0], "qemu-img compare: template disks identical to the source"


def test_read_endpoints_conform_to_the_schema(run, callback_server):
    """schemathesis over every GET endpoint of a real server process, with the rows this run made."""
    import requests
    import schemathesis
    from schemathesis.specs.openapi.checks import ignored_auth

    base = callback_server.rsplit("/api/", 1)[0]
    auth = {"Authorization": f"Token {run['token']}"}
    schema = schemathesis.from_uri(f"{base}/api/schema/?format=json", headers=auth)
    tpl = run["templates"]["two"].json()
    # a VM (a full clone: it holds nothing of the template) for /api/vms/{id}/, removed after
    r = requests.post(f"{base}/api/vms/", json={"template": tpl["id"], "name": "schema-vm", "clone": "full"},
                      headers=auth, timeout=30)
    assert r.status_code == 202, r.text[:500]
    [made] = wait_jobs(_Api(base, auth), [r.json()["id"]], timeout=300).values()
    assert made["status"] == "done", made["error"]
    vm = requests.get(f"{base}/api/vms/?name=schema-vm", headers=auth, timeout=30).json()["results"][0]
    r = requests.post(f"{base}/api/webhooks/", json={"name": "schema-hook", "url": "http://10.211.0.1:9/hook",
                                                      "events": ["template.ok"], "secret": "s" * 24},
                      headers=auth, timeout=30)
    assert r.status_code == 201, r.text[:500]
    hook = r.json()
    event = requests.get(f"{base}/api/events/", headers=auth, timeout=30).json()["results"][0]
    ids = {"/api/templates/{id}/": tpl["id"], "/api/hosts/{id}/": run["host_id"], "/api/jobs/{id}/": tpl["job"],
           "/api/hosts/{id}/vms/": run["host_id"], "/api/vms/{id}/": vm["id"],
           "/api/volumes/{id}/": tpl["disks"][0]["volume"]["id"], "/api/events/{id}/": event["id"],
           "/api/webhooks/{id}/": hook["id"], "/api/webhooks/{id}/deliveries/": hook["id"]}
    checked = []
    for result in schema.get_all_operations():
        op = result.ok()
        if op.method.upper() != "GET":
            continue
        case = op.make_case(path_parameters={"id": ids[op.path]} if "{id}" in op.path else {}, query={})
        response = case.call(base_url=base, headers={"Authorization": f"Token {run['token']}"})
        assert response.status_code == 200, (op.path, response.text[:500])
        # ignored_auth misreads a token passed to call() as generated auth; that anonymous and wrong
        # tokens are refused is tested directly (test_api_auth).
        case.validate_response(response, excluded_checks=(ignored_auth,))
        checked.append(op.path)
    assert len(checked) == 16, checked
    assert requests.delete(f"{base}/api/webhooks/{hook['id']}/", headers=auth, timeout=30).status_code == 204
    r = requests.delete(f"{base}/api/vms/{vm['id']}/", headers=auth, timeout=30)
    assert r.status_code == 202, r.text[:500]
    [gone] = wait_jobs(_Api(base, auth), [r.json()["id"]], timeout=300).values()
    assert gone["status"] == "done", gone["error"]


class _Api:
    """wait_jobs' client over HTTP (the server process's view)."""

    def __init__(self, base, auth):
        self.base, self.auth = base, auth

    def get(self, path):
        import requests

        return requests.get(self.base + path, headers=self.auth, timeout=30)


def test_a_disk_without_a_linux_guest_is_refused_and_nothing_is_left(run):
    for key, why in (("blank", "no operating system was recognised"), ("win", "no operating system was recognised")):
        job = run["jobs"][key]
        assert job["status"] == "failed", key
        assert job["error"].startswith("SEAL failed: "), job["error"]
        assert why in job["error"]
        assert "only one unencrypted Linux guest can be sealed" in job["error"]
        assert job["error_code"] == "guest_refused"
        actions = [c["action"] for c in job["children"]]
        assert actions.count("seal") == 1
        assert "update_volume" in actions, "the copy was ILLEGAL before virt-sysprep touched it"
        assert [c["step"] for c in job["children"] if c["action"] == "update_volume"] == ["ASSIGN_ILLEGAL"], \
            "nothing was ever made LEGAL"
        assert all(c["status"] == "done" for c in job["children"] if c["action"] == "delete")
        assert run["templates"][key].status_code == 404


def test_a_virt_sysprep_failure_fails_in_seal_and_leaves_nothing(run):
    job = run["jobs"]["sealfail"]
    assert job["status"] == "failed"
    assert job["error"].startswith("SEAL failed: virt-sysprep exited 1"), job["error"]
    assert "virt-sysprep: error:" in job["error"], "virt-sysprep's own message is kept"
    seal_job = next(c for c in job["children"] if c["action"] == "seal")
    assert seal_job["status"] == "failed"
    deletes = [c for c in job["children"] if c["action"] == "delete"]
    assert deletes
    assert all(c["status"] == "done" for c in deletes)
    assert run["templates"]["sealfail"].status_code == 404, "the failed template is removed"


def test_the_pool_holds_exactly_the_volumes_of_surviving_templates(run):
    kept = {p.rsplit("/", 1)[1] for k in ("one", "two", "plain", "custom", "hostile")
            for p in [d["volume"]["path"] for d in run["templates"][k].json()["disks"]]}
    assert {n for n in run["pool"] if n.endswith(".qcow2")} == kept
    assert {n for n in run["pool"] if n.endswith(".meta")} == {n.replace(".qcow2", ".meta") for n in kept}
    assert {v["path"].rsplit("/", 1)[1] for v in run["volumes"] if "/templates/" in v["path"]} == kept


def test_default_seal_passes_the_audit_and_the_report_is_in_the_api(run):
    for key in ("one", "two", "custom"):
        audit = run["templates"][key].json()["audit"]
        assert audit["passed"] is True, audit
        names = {i["item"] for i in audit["items"]}
        assert {"ssh host keys", "persistent net rules", "MAC pinning in network configs", "hostname",
                "DHCP leases", "log files empty", "shell histories", "random seed",
                "LVM system.devices"} <= names
        assert all(i["ok"] for i in audit["items"])
    assert "debian" in run["templates"]["one"].json()["guest_os"]
    # the items come back from the guest's report disk, with their detail
    hostname = next(i for i in run["templates"]["custom"].json()["audit"]["items"] if i["item"] == "hostname")
    assert hostname == {"item": "hostname", "ok": True, "detail": "web-01"}


def test_a_guests_symlinks_to_host_paths_never_reach_the_host(run):
    """The hostile guest links /etc/os-release, a NetworkManager keyfile and /etc/network/interfaces.d
    to marker files on the hypervisor host. Everything vmseal does to a guest runs inside the appliance,
    where those links point into the guest itself: the host's files are untouched (same inode, same
    bytes), none of their content is in the template's disks, the template, its jobs or any API answer,
    and the guest's os-release is its own."""
    assert run["marker_before"] == run["marker_after"]
    assert len(run["marker_after"]) == 3
    job, tpl = run["jobs"]["hostile"], run["templates"]["hostile"]
    assert job["status"] == "done", job["error"]
    assert tpl.json()["guest_os"] == "Debian GNU/Linux 12 (bookworm) (debian 12)", "from /usr/lib/os-release"
    assert run["marker_in_disks"] == {p: "0" for p in run["paths"]["hostile"]}, "no marker bytes in the volumes"
    files = run["sealed"][run["paths"]["hostile"][0]]["files"]
    for link, target in (("/etc/os-release", "os-release"),
                         ("/etc/NetworkManager/system-connections/host.nmconnection", "host.nmconnection"),
                         ("/etc/network/interfaces.d", "interfaces.d")):
        assert files[link] == {"link": f"/var/lib/vmseal/hostile-marker/{target}"}, (link, files[link])
    assert files["/usr/lib/os-release"]["head"].startswith('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"')
    for text in run["api_texts"] + run["job_texts"] + run["template_rows"]:
        assert MARKER not in text


def test_no_root_password_hash_is_in_any_process_argv_during_the_seals(run):
    """The custom template sets a root password: its hash reaches virt-sysprep in a 0600 commands file in
    the job's directory, never in an argv (/proc/*/cmdline is readable by every local user)."""
    assert run["argv_watch"].sysprep_seen > 0, "the watch saw the seals run"
    assert run["argv_watch"].hits == []
    shadow = run["sealed"][run["paths"]["custom"][0]]["files"]["/etc/shadow"]["head"]
    assert shadow.startswith(f"root:{run['password_hash']}:"), "and the hash was applied"


def test_every_audited_item_is_gone_when_read_independently(run):
    disk = run["sealed"][run["paths"]["one"][0]]["files"]
    assert "mac-address" not in disk["/etc/NetworkManager/system-connections/eth0.nmconnection"]["head"]
    assert "[connection]" in disk["/etc/NetworkManager/system-connections/eth0.nmconnection"]["head"], "kept"
    assert "hwaddress" not in disk["/etc/network/interfaces"]["head"]
    assert "iface eth0 inet dhcp" in disk["/etc/network/interfaces"]["head"]
    assert disk["/etc/lvm/devices/system.devices"] is None
    assert disk["/var/lib/systemd/random-seed"] is None
    assert disk["/var/lib/dbus/machine-id"] is None or disk["/var/lib/dbus/machine-id"]["size"] == 0


def test_an_operations_list_that_keeps_ssh_keys_fails_the_audit(run):
    job = run["jobs"]["keys"]
    assert job["status"] == "failed"
    assert job["error"].startswith("SEAL failed: audit found identity left: ssh host keys"), job["error"]
    assert "/etc/ssh/ssh_host_ed25519_key" in job["error"]
    assert run["templates"]["keys"].status_code == 404
    updates = [c for c in job["children"] if c["action"] == "update_volume"]
    assert len(updates) == 1, "only ILLEGAL was ever assigned: nothing became LEGAL"


def test_customisation_options_show_in_the_sealed_disk(run):
    disk = run["sealed"][run["paths"]["custom"][0]]
    f = disk["files"]
    assert f["/etc/hostname"]["head"].strip() == "web-01"
    assert f["/etc/localtime"]["link"].endswith("/zoneinfo/Europe/Berlin")
    assert INJECTED in f["/home/alice/.ssh/authorized_keys"]["head"]
    shadow_root = f["/etc/shadow"]["head"].splitlines()[0]
    assert shadow_root.startswith("root:$6$"), "the root password is set, as a SHA-512 crypt hash"
    scripts = disk["dirs"]["/usr/lib/virt-sysprep/scripts"]
    assert scripts, "a first-boot script is installed"
    assert run["templates"]["custom"].json()["seal_options"]["root_password"] == "(set)"


def test_the_root_password_is_never_stored_logged_or_echoed(run):
    for text in run["job_texts"] + run["template_rows"] + run["api_texts"]:
        assert PASSWORD not in text
    hash_ = run["sealed"][run["paths"]["custom"][0]]["files"]["/etc/shadow"]["head"].splitlines()[0].split(":")[1]
    for text in run["api_texts"] + run["job_texts"]:
        assert hash_ not in text, "not even its hash is shown"


# -- refusals: nothing may change --------------------------------------------------------------------------
def _snapshot(test_host):
    from hostjobs.models import HostJob
    from templates.models import Template
    from volumes.models import Volume

    return (Template.objects.count(), Volume.objects.count(), HostJob.objects.count(), test_host.pool_files())


@pytest.fixture
def host_row(test_host, db):
    from hostjobs.models import Host

    return Host.objects.create(name="e2e1-refusals", address=test_host.address, host_key=test_host.host_key,
                               guestfs_backend_settings="force_tcg")


@pytest.fixture
def running_vm(test_host):
    test_host.define_vm("runner", "one")
    test_host.virsh("start", "runner")
    try:
        yield "runner"
    finally:
        test_host.virsh("destroy", "runner", check=False)
        test_host.virsh("undefine", "runner", check=False)


@pytest.mark.django_db
def test_running_vm_is_refused_before_any_change(api, host_row, test_host, running_vm):
    assert "running" in test_host.virsh("domstate", running_vm).stdout
    before = _snapshot(test_host)
    r = api.post("/api/templates/", {"name": "from-running", "host": host_row.pk, "vm": running_vm, "seal": True},
                 format="json")
    assert r.status_code == 409
    assert "running" in r.json()["vm"][0]
    assert _snapshot(test_host) == before


@pytest.mark.django_db
def test_unknown_vm_and_unknown_host_are_refused(api, host_row, test_host):
    before = _snapshot(test_host)
    r = api.post("/api/templates/", {"name": "x", "host": host_row.pk, "vm": "no-such-vm"}, format="json")
    assert r.status_code == 400
    assert "no VM named 'no-such-vm'" in r.json()["vm"][0]
    r = api.post("/api/templates/", {"name": "x", "host": 99999, "vm": "gold1"}, format="json")
    assert r.status_code == 400
    assert "host" in r.json()
    assert _snapshot(test_host) == before


@pytest.mark.django_db
def test_host_presenting_another_key_is_refused(api, test_host):
    from hostjobs.models import Host

    other_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"
    h = Host.objects.create(name="impostor", address=test_host.address, host_key=other_key)
    before = _snapshot(test_host)
    r = api.post("/api/templates/", {"name": "y", "host": h.pk, "vm": "gold1"}, format="json")
    assert r.status_code == 400
    assert "pinned host key" in r.json()["host"][0]
    assert _snapshot(test_host) == before


@pytest.mark.django_db
def test_duplicate_name_is_refused(api, host_row, test_host):
    from templates.models import Template

    Template.objects.create(name="taken", host=host_row, vm_name="gold1", status="ok", phase="DONE")
    before = _snapshot(test_host)
    r = api.post("/api/templates/", {"name": "taken", "host": host_row.pk, "vm": "gold1"}, format="json")
    assert r.status_code == 400
    assert "name" in r.json()
    assert _snapshot(test_host) == before


@pytest.mark.django_db
def test_admin_new_template_form_has_seal_checkbox_and_shows_refusals(client, admin_user, host_row, running_vm):
    from templates.models import Template

    client.force_login(admin_user)
    page = client.get("/admin/templates/template/add/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'name="seal"' in html
    assert "Seal template" in html
    r = client.post("/admin/templates/template/add/",
                    {"host": host_row.pk, "vm_name": running_vm, "name": "admin-tpl", "description": "", "seal": "on"})
    assert r.status_code == 200, "the form is shown again with its error"
    assert "only a shut-off VM can become a template" in r.content.decode()
    assert not Template.objects.filter(name="admin-tpl").exists()


@pytest.mark.django_db
def test_idempotency_key_returns_the_same_job_and_never_a_second_template(api, host_row, test_host):
    from templates.models import Template

    test_host.define_vm("idem", "one")
    body = {"name": "idem-tpl", "host": host_row.pk, "vm": "idem", "seal": False}
    first = api.post("/api/templates/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 202
    again = api.post("/api/templates/", body, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again["Location"] == first["Location"]
    assert Template.objects.filter(name="idem-tpl").count() == 1
    other = api.post("/api/templates/", {**body, "name": "idem-other"}, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert other.status_code == 422
    assert not Template.objects.filter(name="idem-other").exists()
    refused = api.post("/api/templates/", {**body, "vm": "no-such"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert refused.status_code == 400
    fixed = api.post("/api/templates/", {**body, "name": "idem-2"}, format="json", HTTP_IDEMPOTENCY_KEY="k-2")
    assert fixed.status_code == 202, "a refused request frees its key"
    test_host.virsh("undefine", "idem", check=False)
