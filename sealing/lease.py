"""A worker's hold on a flow, and the sweeper's query for the flows nobody holds.

A flow runs in one worker at a time: the worker holds its row's lease (``lease_expires`` and
``lease_owner``, on a Template or a Vm: any model with those two fields and ``status``/``phase``/``updated``),
renewed by a LeaseKeeper thread while it runs the flow. A worker that dies stops
renewing; once the lease has expired, ``orphaned()`` lists the flow and the sweeper
(``sealing.tasks.sweep``) enqueues it again, and the next worker resumes it. The owner token fences a
worker cut off from the database past its lease: it can no longer renew or release, and its next
heartbeat raises LeaseLost.
"""

from __future__ import annotations

import logging
import threading
import uuid
from datetime import timedelta

from django.db import DatabaseError, connections
from django.db.models import Q, QuerySet
from django.utils import timezone

from templates.models import Template

log = logging.getLogger("vmseal.flow")

LEASE = timedelta(seconds=20)
SETTLE = timedelta(seconds=10)  # a flow enqueued a moment ago has no lease yet: the sweeper leaves it


class LeaseLost(Exception):
    """Another worker holds this flow's lease now (this one lost the database past the lease and the
    sweeper gave the flow to another worker): stop at once and touch nothing of the flow."""


def _free(now) -> Q:
    """No live worker holds the flow: no lease, or an expired one."""
    return Q(lease_expires__isnull=True) | Q(lease_expires__lt=now)


# Unfinished, in every flow's vocabulary (templates.states, vms.states): an operation runs, or a rollback
# or a clean-up is to finish.
UNFINISHED = Q(status="locked") | Q(phase__in=["ROLLBACK", "CLEANUP_FAILED"])


def orphaned(model=Template) -> QuerySet:
    """The sweeper's query: flows to run again. Unfinished rows of ``model`` (locked, or a rollback or
    a clean-up to finish) whose lease nobody holds and that nothing touched for SETTLE."""
    now = timezone.now()
    return (model.objects
            .filter(UNFINISHED)
            .filter(_free(now))
            .filter(updated__lt=now - SETTLE))


class Lease:
    """A worker's hold on a flow: an expiry renewed while the worker runs it, and an owner token, so a
    worker that was cut off past its expiry cannot renew, release or go on with a flow another worker
    has taken over. Its heartbeat raises LeaseLost then."""

    def __init__(self, obj_id: int, token: str, model=Template):
        self.obj_id, self.token, self.model = obj_id, token, model
        self.lost = threading.Event()

    @property
    def label(self) -> str:
        return f"{self.model._meta.model_name} {self.obj_id}"

    @classmethod
    def acquire(cls, obj_id: int, model=Template) -> Lease | None:
        """The lease of ``model`` row ``obj_id``'s flow, if no live worker holds it (none, or expired)."""
        now, token = timezone.now(), uuid.uuid4().hex
        taken = (model.objects.filter(pk=obj_id).filter(_free(now))
                 .update(lease_expires=now + LEASE, lease_owner=token))
        return cls(obj_id, token, model) if taken else None

    def renew(self) -> bool:
        """Extend the lease; False (and ``lost`` set) when another worker has taken it over."""
        if self.lost.is_set():
            return False
        if self.model.objects.filter(pk=self.obj_id, lease_owner=self.token).update(
                lease_expires=timezone.now() + LEASE):
            return True
        if self.model.objects.filter(pk=self.obj_id).exists():  # a removed row ends the flow anyway
            self.lost.set()
        return False

    def heartbeat(self) -> None:
        """Renew, or raise LeaseLost if the flow belongs to another worker now."""
        if not self.renew() and self.lost.is_set():
            raise LeaseLost(f"{self.label}: another worker took this flow over")

    def release(self) -> None:
        self.model.objects.filter(pk=self.obj_id, lease_owner=self.token).update(lease_expires=None, lease_owner="")


class LeaseKeeper(threading.Thread):
    """Renews a flow's lease every LEASE/4 while its worker runs the flow, including while the worker
    is blocked in a host command (an SSH command to a host whose link is down takes up to its
    timeout, longer than the lease). Without it the sweeper would take the flow for orphaned and start
    a second worker on it. The thread dies with its process: a killed worker's lease still expires.
    It stops once the lease is lost; the worker's next heartbeat then raises LeaseLost."""

    def __init__(self, lease: Lease, every: float = LEASE.total_seconds() / 4):
        super().__init__(name=f"vmseal-lease-{lease.label.replace(' ', '-')}", daemon=True)
        self.lease, self.every = lease, every
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            while not self._halt.wait(self.every):
                try:
                    if not self.lease.renew() and self.lease.lost.is_set():
                        log.warning("%s: lease taken over by another worker", self.lease.label)
                        return
                except DatabaseError as e:  # the database away for a moment: the next round retries
                    log.warning("%s: lease not renewed: %s", self.lease.label, e)
        finally:
            connections.close_all()  # this thread's own connections

    def stop(self) -> None:
        self._halt.set()
        self.join()
