"""The flow's lease (sealing.lease): one worker holds a flow, its keeper renews it while the worker is
busy, a worker cut off past its lease is fenced out, and the sweeper's query finds the flows nobody
holds."""

import pytest

from tests.fixtures.templates import create_template


@pytest.mark.django_db
def test_the_sweeper_finds_unfinished_flows_that_no_live_worker_holds(host):
    from datetime import timedelta

    from django.utils import timezone

    from sealing import lease
    from templates.models import Phase, Template

    now = timezone.now()
    old, expired, live = now - timedelta(seconds=30), now - timedelta(seconds=1), now + timedelta(seconds=15)
    cases = {  # name: (status, phase, lease_expires, updated), and whether the sweeper resumes it
        "no-lease": (("locked", Phase.COPY_DISKS, None, old), True),
        "expired": (("locked", Phase.SEAL, expired, old), True),
        "rollback": (("failed", Phase.ROLLBACK, expired, old), True),
        "cleanup": (("failed", Phase.CLEANUP_FAILED, None, old), True),
        "held": (("locked", Phase.SEAL, live, old), False),
        "just-enqueued": (("locked", Phase.CREATE_TEMPLATE, None, now), False),
        "done": (("ok", Phase.DONE, None, old), False),
    }
    for name, ((status, phase, expires, updated), _) in cases.items():
        t = create_template(host, name, status=status, phase=phase)
        Template.objects.filter(pk=t.pk).update(lease_expires=expires, updated=updated)
    found = set(lease.orphaned().values_list("name", flat=True))
    assert found == {name for name, (_, resumed) in cases.items() if resumed}


@pytest.mark.django_db(transaction=True)
def test_the_lease_keeper_renews_a_flows_lease_until_stopped(host):
    import time
    from datetime import timedelta

    from django.utils import timezone

    from sealing import lease
    from templates.models import Template

    t = Template.objects.create(name="leased", host=host, vm_name="v")
    held = lease.Lease.acquire(t.pk)
    assert held is not None
    assert lease.Lease.acquire(t.pk) is None, "one worker holds a flow's lease"
    Template.objects.filter(pk=t.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    keeper = lease.LeaseKeeper(held, every=0.05)
    keeper.start()
    try:
        time.sleep(0.5)
        renewed = Template.objects.get(pk=t.pk).lease_expires
        assert renewed > timezone.now() + lease.LEASE - timedelta(seconds=2), "renewed while the worker is busy"
    finally:
        keeper.stop()
    assert not keeper.is_alive()
    Template.objects.filter(pk=t.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))
    time.sleep(0.2)
    assert Template.objects.get(pk=t.pk).lease_expires < timezone.now(), "a stopped keeper renews nothing"


@pytest.mark.django_db(transaction=True)
def test_a_worker_cut_off_past_its_lease_cannot_go_on_with_a_flow_taken_over(host, operation):
    """A worker that lost the database longer than the lease: the sweeper gave the flow to another
    worker. The first one's renewals, heartbeat and release are refused, its keeper stops, and its
    rollback raises LeaseLost before writing anything; the new owner's lease is untouched."""
    from datetime import timedelta

    from django.utils import timezone

    from hostjobs.models import HostJob
    from sealing import flow, lease
    from templates.models import Phase, Template

    op = operation
    t = Template.objects.create(name="taken", host=host, vm_name="v", phase=Phase.SEAL, job=op)
    old = lease.Lease.acquire(t.pk)
    Template.objects.filter(pk=t.pk).update(lease_expires=timezone.now() - timedelta(seconds=1))  # cut off
    new = lease.Lease.acquire(t.pk)
    assert new is not None, "an expired lease is taken over"
    assert new.token != old.token
    keeper = lease.LeaseKeeper(old, every=0.05)
    keeper.start()
    keeper.join(timeout=2)
    assert not keeper.is_alive(), "the old worker's keeper stops once the lease is another's"
    assert old.lost.is_set()
    assert old.renew() is False
    with pytest.raises(lease.LeaseLost):
        old.heartbeat()
    with pytest.raises(lease.LeaseLost):
        flow.rollback(t, op, "SEAL failed: whatever", "error", old)
    row = Template.objects.get(pk=t.pk)
    assert (row.status, row.phase, row.error) == ("locked", Phase.SEAL, ""), "the old worker wrote nothing"
    assert HostJob.objects.get(pk=op.pk).status == "running"
    old.release()
    row.refresh_from_db()
    assert row.lease_owner == new.token, "release spares the new owner"
    assert row.lease_expires > timezone.now()
    assert new.renew() is True
    assert not new.lost.is_set()
    new.release()
    assert Template.objects.get(pk=t.pk).lease_expires is None

