"""The template flow's decisions, run for real (``sealing.flow.run`` on a template row, in this process,
no qcluster) against an in-process fake of a host's protocol (tests/utils/fakehost.py) behind the host
port: how a failed seal is classified, a rollback whose volumes cannot be deleted and its retry, the
operation's end when a cancel races it, and a cancel in every step. Each test checks the database
(template, volumes, jobs) and what the host was asked. Real hosts: the e2e tests."""

import pytest

from hostjobs import port, runner
from hostjobs.models import Host, HostJob, JobAction, JobStatus
from sealing import flow
from templates.models import Phase, Template, TemplateStatus
from tests.utils.fakehost import ALL, POOL_FULL_MESSAGE, FakeHost
from volumes.models import Legality, Volume

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK"


@pytest.fixture
def fake(db, monkeypatch):
    monkeypatch.setattr(runner, "POLL_MIN", 0.0)  # the fake answers at once: poll without waiting
    monkeypatch.setattr(runner, "WATCH", 0.0)
    host = FakeHost()
    with port.use(lambda h: host):
        yield host


@pytest.fixture
def host(db):
    return Host.objects.create(name="h", address="10.211.0.251", host_key=KEY)


def _template(host, *, seal=True) -> Template:
    """A template as the API makes it (service.start without the enqueue): locked, CREATE_TEMPLATE."""
    t = Template.objects.create(name="t", host=host, vm_name="vm", seal=seal)
    op = HostJob.create(host, JobAction.CREATE_TEMPLATE, target=f"template:{t.pk}", description="create")
    Template.objects.filter(pk=t.pk).update(job=op)
    return Template.objects.get(pk=t.pk)


def test_a_seal_runs_every_step_on_the_host(fake, host):
    t = _template(host)
    flow.run(t.pk)
    t = Template.objects.get(pk=t.pk)
    assert (t.status, t.phase, t.sealed) == (TemplateStatus.OK, Phase.DONE, True)
    assert t.guest_os.startswith("Debian GNU/Linux 12")
    assert HostJob.objects.get(pk=t.job_id).status == JobStatus.DONE
    vols = list(Volume.objects.all())
    assert len(vols) == 2
    assert all((v.legality, v.type) == (Legality.LEGAL, "SHARED") for v in vols)
    assert {str(v.id): (v.legality, v.type, v.generation) for v in vols} == {
        i: (m["legality"], m["type"], m["generation"]) for i, m in fake.volumes.items()}
    assert [a.source for a in fake.started("create-volume")] == [d.path for d in fake.domain.disks]
    [seal] = fake.started("run")
    assert sorted(seal.writable) == sorted(str(v.id) for v in vols)
    assert seal.report_disk == "report.img"
    assert not fake.jobs  # every ended job cleared on the host


@pytest.mark.parametrize(("log", "result", "code", "error"), [
    ("virt-sysprep: error: no operating systems were found in the guest image\n", None, "guest_refused",
     "SEAL failed: no operating system was recognised on the VM's disks: only one unencrypted Linux guest can be"),
    ("vmseal-audit FAIL machine-id: /etc/machine-id is set\nvmseal-audit ok ssh-host-keys:\n"
     "virt-sysprep: error: customize command failed\n", None, "flow_failed",
     "SEAL failed: audit found identity left: machine-id (/etc/machine-id is set)"),
    ("vmseal: error: full\n", {"exit_code": -15, "error": "pool_full", "message": POOL_FULL_MESSAGE}, "flow_failed",
     f"SEAL failed: {POOL_FULL_MESSAGE}"),
    ("virt-sysprep: error: libguestfs error: could not create appliance\n", None, "flow_failed",
     "SEAL failed: virt-sysprep exited 1: virt-sysprep: error: libguestfs error: could not create appliance"),
])
def test_a_failed_seal_is_classified_and_rolled_back(fake, host, log, result, code, error):
    fake.seal_fails(log, exit_code=1, result=result)
    t = _template(host)
    flow.run(t.pk)
    op = HostJob.objects.get(pk=t.job_id)
    assert (op.status, op.error_code) == (JobStatus.FAILED, code)
    assert op.error.startswith(error)
    assert not Template.objects.filter(pk=t.pk).exists()
    assert not Volume.objects.exists()
    seal = op.children.get(step=Phase.SEAL)
    assert seal.status == JobStatus.FAILED
    assert log in seal.log
    assert len(fake.started("delete-volume")) == 2
    assert not fake.volumes


def test_a_refused_guest_is_a_GuestRefused(fake, host):
    fake.seal_fails("virt-sysprep: error: multi-boot operating systems are not supported\n")
    t = _template(host)
    t.refresh_from_db()
    ctx = flow.Context(t, HostJob.objects.get(pk=t.job_id), _NoLease())
    ctx.op.start()
    flow.create_template(ctx)
    flow.copy_disks(ctx)
    flow.assign_illegal(ctx)
    with pytest.raises(flow.GuestRefused) as e:
        flow.seal(ctx)
    assert e.value.code == "guest_refused"
    assert e.value.found == {"audit": {}}  # no audit line came back: no audit


class _NoLease:
    def heartbeat(self):
        pass


def test_undeletable_volumes_leave_the_template_failed_and_a_retry_removes_them(fake, host):
    fake.seal_fails("virt-sysprep: error: boom\n")
    fake.undeletable = ALL
    t = _template(host)
    flow.run(t.pk)
    t = Template.objects.get(pk=t.pk)
    assert (t.status, t.phase) == (TemplateStatus.FAILED, Phase.CLEANUP_FAILED)
    assert "volumes left ILLEGAL on the host" in t.error
    assert "Operation not permitted" in t.error
    assert t.error.startswith("SEAL failed: virt-sysprep exited 1")
    vols = list(Volume.objects.all())
    assert len(vols) == 2
    assert all(v.legality == Legality.ILLEGAL for v in vols)
    assert all(m["legality"] == "ILLEGAL" for m in fake.volumes.values())
    assert len(fake.volumes) == 2
    op = HostJob.objects.get(pk=t.job_id)
    assert (op.status, op.error_code) == (JobStatus.FAILED, "flow_failed")
    assert op.children.filter(step=Phase.ROLLBACK, status=JobStatus.FAILED).count() == 2

    fake.undeletable = set()  # the host is fixed: the sweeper's retry
    flow.run(t.pk)
    assert not Template.objects.filter(pk=t.pk).exists()
    assert not Volume.objects.exists()
    assert not fake.volumes
    op.refresh_from_db()
    assert (op.status, op.error_code) == (JobStatus.FAILED, "flow_failed")  # ended once, by the first rollback
    assert "rollback done: template and volumes removed" in op.log


def test_a_cancel_racing_the_operations_end_ends_it_aborted(fake, host, monkeypatch):
    """The rollback reads the operation running and ends it failed; a cancel lands between the read and
    the write: the end is refused, read again, and the operation ends aborted (never left unended)."""
    fake.seal_fails("virt-sysprep: error: boom\n")
    t = _template(host)
    real = HostJob.refresh_from_db
    raced = []

    def refresh(self, *args, **kwargs):
        real(self, *args, **kwargs)
        if kwargs.get("fields") == ["status"] and self.pk == t.job_id and not raced:
            raced.append(True)
            HostJob.objects.get(pk=self.pk).cancel("cancelled by an admin")  # another process's cancel

    monkeypatch.setattr(HostJob, "refresh_from_db", refresh)
    flow.run(t.pk)
    op = HostJob.objects.get(pk=t.job_id)
    assert raced
    assert (op.status, op.error_code) == (JobStatus.ABORTED, "aborted")
    assert op.error.startswith("SEAL failed: virt-sysprep exited 1")
    assert not Template.objects.filter(pk=t.pk).exists()
    assert not fake.volumes


def test_a_host_unreachable_for_a_moment_is_retried(fake, host):
    fake.unreachable = 1
    t = _template(host, seal=False)
    flow.run(t.pk)
    t = Template.objects.get(pk=t.pk)
    assert (t.status, t.phase, t.sealed) == (TemplateStatus.OK, Phase.DONE, False)
    op = HostJob.objects.get(pk=t.job_id)
    assert op.status == JobStatus.DONE
    assert "unreachable" in op.log
    assert "retrying" in op.log
    assert fake.calls[:2] == [["domain_info", "vm"], ["domain_info", "vm"]]
    assert not fake.started("run")
    assert all(m["type"] == "SHARED" for m in fake.volumes.values())


def test_a_host_unreachable_past_the_retry_fails_the_step(fake, host, settings):
    settings.VMSEAL_HOST_RETRY = 0
    fake.unreachable = 1
    t = _template(host)
    flow.run(t.pk)
    op = HostJob.objects.get(pk=t.job_id)
    assert (op.status, op.error_code) == (JobStatus.FAILED, "host_unreachable")
    assert op.error.startswith("CREATE_TEMPLATE failed: cannot reach fake host")
    assert not Template.objects.filter(pk=t.pk).exists()
    assert not fake.jobs
    assert not fake.volumes


# A cancel in each step: (the call it lands on, the step's name, whether a host job of it is aborted).
CANCELS = [
    ("domain_info", Phase.CREATE_TEMPLATE, None),
    ("job:create-volume", Phase.COPY_DISKS, "create-volume"),
    ("job:update-volume", Phase.ASSIGN_ILLEGAL, "update-volume"),
    ("job:run", Phase.SEAL, "run"),
    ("legal", Phase.ASSIGN_LEGAL_SHARED, "update-volume"),
]


@pytest.mark.parametrize(("at", "phase", "aborted"), CANCELS, ids=[c[1] for c in CANCELS])
def test_a_cancel_in_each_step_rolls_back(fake, host, at, phase, aborted):
    t = _template(host)
    cancelled = []

    def cancel(args):
        if not cancelled:
            cancelled.append(args)
            HostJob.objects.get(pk=t.job_id).cancel("stop it")

    if at == "legal":  # the first update that makes a volume LEGAL
        fake.when("job:update-volume", lambda args: cancel(args) if "LEGAL" in args else None)
    else:
        fake.when(at, cancel)
    flow.run(t.pk)
    assert cancelled
    op = HostJob.objects.get(pk=t.job_id)
    assert (op.status, op.error_code, op.error) == (JobStatus.ABORTED, "aborted", f"cancelled in {phase}: stop it")
    assert not Template.objects.filter(pk=t.pk).exists()
    assert not Volume.objects.filter(legality=Legality.LEGAL).exists()
    assert not Volume.objects.exists()
    assert not fake.volumes  # nothing left on the host
    if aborted:
        [job] = op.children.filter(status=JobStatus.ABORTED)
        assert job.step == phase
        assert str(job.id) in fake.aborted
        assert fake.started(aborted)
    else:
        assert not fake.aborted
        assert not fake.started("create-volume")
