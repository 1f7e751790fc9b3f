"""Host scans without a host: volumes.reconcile.compare (pure: a pool-scan answer against rows), the
volume rules' metadata check, and on the database which volumes are busy and that fixes are compare-and-set."""

import uuid

import pytest

from volumes.reconcile import PoolMissing, compare


def vid():
    return str(uuid.uuid4())


def meta(vol_id, **kw):
    return {"id": vol_id, "type": "SHARED", "legality": "LEGAL", "generation": 1, "parent": None, "format": "qcow2",
            **kw}


def row(**kw):
    return {"type": "SHARED", "legality": "LEGAL", "generation": 1, "format": "qcow2", "error": "", **kw}


def scan(*vols, unknown=()):
    """A pool-scan answer: vols are (id, meta or None, meta_error, data present, part present)."""
    files, volumes = [], []
    for vol_id, m, err, data, part in vols:
        volumes.append({"id": vol_id, "meta": m, "meta_error": err, "data": data, "part": part, "size": 1,
                        "allocated": 1, "mode": "0o444"})
        files += [{"name": f"{vol_id}.{ext}", "kind": "file", "size": 1, "mode": "0o644"}
                  for ext, present in (("meta", m is not None or err != "no metadata file"), ("qcow2", data),
                                       ("qcow2.part", part)) if present]
    unknown = [{"name": n, "kind": "file", "size": 3, "mode": "0o600", "allocated": 4096} for n in unknown]
    return {"pool": "/pool", "exists": True, "volumes": volumes, "unknown": unknown, "files": files + unknown}


def test_a_pool_that_matches_its_rows_has_no_drift():
    a, b = vid(), vid()
    r = compare("h", scan((a, meta(a), None, True, False), (b, meta(b, type="LEAF"), None, True, False)),
                {a: row(), b: row(type="LEAF")})
    assert not r.drift
    assert (r.unknown_volumes, r.unknown_files, r.missing, r.differs, r.skipped) == ([], [], [], [], [])
    assert (r.host_volumes, r.db_volumes) == (2, 2)


def test_each_kind_of_drift_is_reported_once():
    same, gone, no_data, bad_meta, edited, stranger = (vid() for _ in range(6))
    s = scan((same, meta(same), None, True, False),
             (no_data, meta(no_data), None, False, True),
             (bad_meta, None, "unknown legality 'MAYBE'", True, False),
             (edited, meta(edited, legality="ILLEGAL", generation=2), None, True, False),
             (stranger, meta(stranger, type="LEAF"), None, True, False),
             unknown=["notes.txt"])
    rows = {same: row(), gone: row(), no_data: row(), bad_meta: row(), edited: row()}
    r = compare("h", s, rows)
    assert r.drift
    assert {m["id"]: m["why"] for m in r.missing} == {
        gone: "no file of it in the pool",
        no_data: "its data file is missing (an unfinished copy's .part remains)",
        bad_meta: "its metadata is unusable: unknown legality 'MAYBE'",
    }
    assert r.differs == [{"id": edited, "db": {"legality": "LEGAL", "generation": 1},
                          "host": {"legality": "ILLEGAL", "generation": 2}}]
    assert [(u["id"], u["files"], u["meta"]["type"]) for u in r.unknown_volumes] == [
        (stranger, [f"{stranger}.meta", f"{stranger}.qcow2"], "LEAF")]
    assert [f["name"] for f in r.unknown_files] == ["notes.txt"]


def test_every_compared_field_is_checked():
    for field, host_value in (("type", "LEAF"), ("legality", "ILLEGAL"), ("generation", 7), ("format", "raw")):
        a = vid()
        r = compare("h", scan((a, meta(a, **{field: host_value}), None, True, False)), {a: row()})
        assert r.differs == [{"id": a, "db": {field: row()[field]}, "host": {field: host_value}}], field


def test_volumes_an_operation_works_on_are_left_out():
    copying, deleted = vid(), vid()
    s = scan((copying, meta(copying, type="LEAF", legality="ILLEGAL", generation=0), None, False, True))
    r = compare("h", s, {copying: row(), deleted: row()}, busy={copying, deleted})
    assert r.skipped == sorted([copying, deleted])
    assert (r.missing, r.differs, r.unknown_volumes) == ([], [], [])
    assert not r.drift


def test_a_volume_another_host_row_knows_is_not_unknown():
    theirs, stranger = vid(), vid()
    s = scan((theirs, meta(theirs), None, True, False), (stranger, meta(stranger), None, True, False))
    r = compare("h", s, {}, elsewhere={theirs})
    assert r.elsewhere == [theirs]
    assert [u["id"] for u in r.unknown_volumes] == [stranger]


def test_a_host_without_its_pool_directory_is_not_compared():
    with pytest.raises(PoolMissing, match="no pool directory"):
        compare("h", {"pool": "/pool", "exists": False, "volumes": [], "unknown": [], "files": []}, {vid(): row()})


def test_meta_problems_refuses_what_must_not_be_mirrored():
    from volumes.rules import meta_problems

    a = vid()
    assert meta_problems(meta(a), a) == []
    assert meta_problems(["not", "a", "dict"]) == ["metadata is not a JSON object"]
    assert meta_problems(meta(a), vid())[0].startswith("id is")
    for bad in ({"type": "BOGUS"}, {"legality": None}, {"generation": -1}, {"generation": 1000}, {"generation": True},
                {"generation": "1"}, {"format": "vmdk"}, {"parent": 5}):
        assert len(meta_problems(meta(a, **bad), a)) == 1, bad


def template_with_volume(host, name, **fields):
    from templates.models import Template, TemplateDisk
    from volumes.models import Volume

    t = Template.objects.create(name=name, host=host, vm_name="vm", **{"status": "ok", "phase": "DONE", **fields})
    vol = Volume.objects.create(host=host, type="SHARED", legality="LEGAL", generation=1)
    TemplateDisk.objects.create(template=t, index=0, target="vda", source_path="/x", source_format="qcow2", volume=vol)
    return t, str(vol.pk)


def test_busy_volumes_are_those_an_operation_may_work_on(host):
    from datetime import timedelta

    from django.utils import timezone

    from hostjobs.models import HostJob, JobAction
    from sealing.reconcile import busy_volume_ids
    from volumes.models import Volume

    now = timezone.now()
    _, idle = template_with_volume(host, "idle")
    _, failed_idle = template_with_volume(host, "failed-idle", status="failed", error="scan")
    _, locked = template_with_volume(host, "locked", status="locked", phase="COPY_DISKS")
    _, rolling = template_with_volume(host, "rolling", status="failed", phase="ROLLBACK")
    _, leased = template_with_volume(host, "leased", lease_expires=now + timedelta(seconds=20))
    _, expired = template_with_volume(host, "expired", lease_expires=now - timedelta(seconds=20))
    running = HostJob.create(host, JobAction.DELETE_TEMPLATE)
    running.start()
    _, job_running = template_with_volume(host, "job-running", job=running)
    orphan = str(Volume.objects.create(host=host).pk)
    assert busy_volume_ids(host) == {locked, rolling, leased, job_running, orphan}

    from templates.models import Template

    Template.objects.exclude(name__in=["idle", "failed-idle", "expired"]).delete()
    assert busy_volume_ids(host) == set(), "a volume of no template is busy only while an operation runs"
    since = timezone.now()
    Volume.objects.get(pk=idle).save()
    assert busy_volume_ids(host, since) == {idle}, "a row written during the scan is left out"
    assert failed_idle not in busy_volume_ids(host, since)
    assert expired not in busy_volume_ids(host, since)


def test_fixes_are_compare_and_set_against_the_rows_as_read(host):
    from sealing.reconcile import fail_templates_of_missing
    from templates.models import Template
    from volumes.models import Volume
    from volumes.reconcile import apply, row_state

    t_edit, edited = template_with_volume(host, "edited")
    t_gone, gone = template_with_volume(host, "gone")
    rows = {v: row_state(Volume.objects.get(pk=v)) for v in (edited, gone)}
    report = compare("h", scan((edited, meta(edited, legality="ILLEGAL", generation=2), None, True, False)), rows)
    # A flow writes both rows after they were read, and locks the missing one's template:
    Volume.objects.filter(pk__in=[edited, gone]).update(generation=3)
    Template.objects.filter(pk=t_gone.pk).update(status="locked")
    apply(host, report, rows)
    fail_templates_of_missing(host, report)
    assert report.changed == []
    assert Volume.objects.get(pk=edited).legality == "LEGAL"
    assert (Volume.objects.get(pk=gone).legality, Template.objects.get(pk=t_gone.pk).status) == ("LEGAL", "locked")

    Template.objects.filter(pk=t_gone.pk).update(status="ok")
    rows = {v: row_state(Volume.objects.get(pk=v)) for v in (edited, gone)}
    report = compare("h", scan((edited, meta(edited, legality="ILLEGAL", generation=2), None, True, False)), rows)
    apply(host, report, rows)
    fail_templates_of_missing(host, report)
    assert len(report.changed) == 3
    assert (Volume.objects.get(pk=edited).legality, Volume.objects.get(pk=edited).generation) == ("ILLEGAL", 2)
    assert Volume.objects.get(pk=gone).legality == "ILLEGAL"
    assert Template.objects.get(pk=t_gone.pk).status == "failed"
    assert Template.objects.get(pk=t_edit.pk).status == "ok"
