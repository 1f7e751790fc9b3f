"""Pure logic: volume rules, job transitions, the virt-sysprep command, phases, parsing."""

import pytest

from hostjobs.transport import parse_host_key
from hostjobs.virt import parse_disks
from sealing import sysprep
from volumes import rules

META = {"id": "v", "type": "LEAF", "legality": "LEGAL", "generation": 7, "parent": None}


def test_update_bumps_generation_and_changes_only_what_was_asked():
    new = rules.plan_update(META, generation=7, legality="ILLEGAL")
    assert new == {**META, "legality": "ILLEGAL", "generation": 8}
    assert META["legality"] == "LEGAL", "the input is not modified"


def test_legal_and_shared_in_one_update_bumps_once():
    ill = {**META, "legality": "ILLEGAL"}
    assert rules.plan_update(ill, generation=7, legality="LEGAL", type="SHARED")["generation"] == 8


def test_generation_wraps_at_999():
    assert rules.plan_update({**META, "generation": 999}, generation=999, legality="ILLEGAL")["generation"] == 0


@pytest.mark.parametrize(
    ("meta", "kwargs", "error"),
    [
        (META, {"generation": 6, "legality": "ILLEGAL"}, rules.StaleGeneration),
        (META, {"generation": 7, "legality": "LEGAL"}, rules.NoChange),
        (META, {"generation": 7}, rules.NoChange),
        (META, {"generation": 7, "type": "LEAF"}, rules.NoChange),
        (META, {"generation": 7, "type": "INTERNAL"}, rules.IllegalChange),
        ({**META, "parent": "p"}, {"generation": 7, "type": "SHARED"}, rules.IllegalChange),
        ({**META, "type": "SHARED"}, {"generation": 7, "legality": "ILLEGAL"}, rules.ReadOnlyVolume),
        ({**META, "type": "SHARED"}, {"generation": 7, "type": "LEAF"}, rules.ReadOnlyVolume),
        (META, {"generation": 7, "legality": "BROKEN"}, rules.IllegalChange),
    ],
)
def test_update_refusals(meta, kwargs, error):
    with pytest.raises(error):
        rules.plan_update(meta, **kwargs)


def test_shared_volume_is_not_writable():
    with pytest.raises(rules.ReadOnlyVolume):
        rules.check_writable({**META, "type": "SHARED"})
    rules.check_writable(META)  # a LEAF is


def test_sysprep_command_passes_every_disk_with_format_and_pinned_operations():
    argv = sysprep.build_command([("/p/a.qcow2", "qcow2"), ("/p/b.qcow2", "qcow2")])
    assert argv[:9] == ["virt-sysprep", "--format", "qcow2", "-a", "/p/a.qcow2", "--format", "qcow2", "-a",
                        "/p/b.qcow2"]
    ops = argv[argv.index("--operations") + 1].split(",")
    assert ops == list(sysprep.DEFAULT_OPERATIONS)
    assert argv[argv.index("--hostname") + 1] == "localhost"
    assert argv[-2:] == ["--truncate", "/etc/machine-id"]
    with pytest.raises(ValueError, match="at least one disk"):
        sysprep.build_command([])


def test_sysprep_environment_is_per_host():
    assert sysprep.environment("") == {"LIBGUESTFS_BACKEND": "direct"}
    assert sysprep.environment("force_tcg")["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg"


def test_sysprep_progress_and_error_summary():
    assert sysprep.progress_of("[   0.0] Examining the guest ...") == 5
    assert sysprep.progress_of('[  45.0] Performing "yum-uuid" ...') == 95
    assert sysprep.progress_of("random noise") is None
    log = "[ 0.0] Examining the guest ...\nvirt-sysprep: error: no operating systems were found in the guest image\n"
    assert sysprep.error_summary(log) == "virt-sysprep: error: no operating systems were found in the guest image"


def test_phases_with_and_without_seal():
    from sealing.flow import next_phase

    def walk(seal):
        p, seen = "CREATE_TEMPLATE", []
        while p != "DONE":
            seen.append(p)
            p = next_phase(p, seal)
        return seen

    assert walk(True) == ["CREATE_TEMPLATE", "COPY_DISKS", "ASSIGN_ILLEGAL", "SEAL", "ASSIGN_LEGAL_SHARED"]
    assert walk(False) == ["CREATE_TEMPLATE", "COPY_DISKS", "ASSIGN_LEGAL_SHARED"]


def test_host_key_parsing():
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK root@h"
    assert parse_host_key(key)[0] == "ssh-ed25519"
    for bad, why in (("", "expected"), ("ssh-dss AAAA", "unsupported"), ("ssh-ed25519 ***", "base64"),
                     ("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHYxXA9dCvPrHMuXWbnnUMW7yDpDlHgZ1aqYjakW6cwK", "match")):
        with pytest.raises(ValueError, match=why):
            parse_host_key(bad)


def test_parse_disks_skips_cdroms_and_sourceless_disks():
    xml = """<domain><devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a.qcow2'/>
        <target dev='vda'/></disk>
      <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='sda'/></disk>
      <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/b'/>
        <target dev='vdb'/></disk>
      <disk type='file' device='disk'><target dev='vdc'/></disk>
    </devices></domain>"""
    assert [(d.target, d.path, d.format) for d in parse_disks(xml)] == [("vda", "/a.qcow2", "qcow2"),
                                                                       ("vdb", "/dev/vg/b", "raw")]


@pytest.mark.django_db
def test_job_transitions_are_guarded():
    from hostjobs.errors import InvalidTransition
    from hostjobs.models import Host, HostJob, JobAction

    host = Host.objects.create(name="h", address="10.211.0.99", host_key="ssh-ed25519 AAAA")
    job = HostJob.create(host, JobAction.SEAL)
    assert job.kind == "virt"
    assert job.status == "pending"
    with pytest.raises(InvalidTransition):
        job.finish()  # pending -> done is not a transition
    with pytest.raises(InvalidTransition):
        job.delete()  # a non-terminal job cannot be deleted
    job.start()
    stale = HostJob.objects.get(pk=job.pk)
    job.finish()
    assert (job.status, job.progress) == ("done", 100)
    assert job.completed is not None
    with pytest.raises(InvalidTransition):
        stale.fail("late")  # another worker's stale copy cannot move a terminal job
    with pytest.raises(InvalidTransition):
        job.request_abort()  # aborting a terminal job is an error
    assert HostJob.objects.get(pk=job.pk).status == "done"
    job.delete()
    aborted = HostJob.create(host, JobAction.COPY)
    aborted.request_abort()
    assert aborted.status == "aborted"
    assert aborted.kind == "storage"
