"""The host is the truth: compare a host's pool with the Volume rows, and fix what is safe.

The host's helper lists its pool (``pool-scan``: every file, each volume's metadata, the files that are
not volumes; nothing followed or opened that is not a volume's metadata). ``compare`` (pure) sets that
against the rows and reports the drift:

    unknown volume  on the host, no Volume row knows it        reported only; an admin removes it
                                                               (``remove_unknown``, a host job)
    unknown file    in the pool, not a volume's (nor a file the reported only, never touched
                    caller knows: a VM's seed ``known_files``)
    missing         a row whose volume the host does not have   the row is marked ILLEGAL with an error
                    (or without its data or readable metadata)  (the caller fails its template)
    differs         type, legality, generation or format        the host's values are mirrored into the row

Each fix is a compare-and-set against the row as it was read, so a scan never overwrites what a flow
wrote meanwhile; volumes an operation is working on are the caller's to name (``busy``: this module
does not know templates) and are left out. Nothing here deletes a file.

A host has two pools, scanned alike (``scan(host, pool=...)``): its template pool (``Host.pool_path``)
and its VM pool (``Host.vm_pool_path``, where VM disks and their NoCloud seeds live). Each pool's rows
are the volumes whose path is in it; a VM pool the host has not made yet holds nothing.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from hostjobs import hostops, port, runner
from hostjobs.errors import VmsealError
from hostjobs.models import HostJob, JobAction, JobStatus
from volumes.models import Legality, UnknownVolume, Volume

log = logging.getLogger("vmseal.reconcile")
FIELDS = ("type", "legality", "generation", "format")


class PoolMissing(VmsealError):
    code = "pool_missing"


class RemovalRefused(VmsealError):
    code = "removal_refused"


@dataclass
class Report:
    host: str
    pool: str
    dry_run: bool = False
    host_volumes: int = 0
    db_volumes: int = 0
    unknown_volumes: list[dict] = field(default_factory=list)  # {id, files, meta, meta_error}
    unknown_files: list[dict] = field(default_factory=list)  # {name, kind, size, mode}
    missing: list[dict] = field(default_factory=list)  # {id, why}
    differs: list[dict] = field(default_factory=list)  # {id, db: {field: v}, host: {field: v}}
    elsewhere: list[str] = field(default_factory=list)  # on the host, known as another Host row's volume
    skipped: list[str] = field(default_factory=list)  # an operation works on them
    changed: list[str] = field(default_factory=list)  # what the scan changed (dry run: would change)
    vm_pool: Report | None = None  # the host's VM pool, scanned with its template pool (``sealing.reconcile``)

    @property
    def own_drift(self) -> bool:
        return bool(self.unknown_volumes or self.unknown_files or self.missing or self.differs)

    @property
    def drift(self) -> bool:
        return self.own_drift or bool(self.vm_pool and self.vm_pool.drift)

    def as_dict(self) -> dict:
        out = {**asdict(self), "drift": self.drift}
        if self.vm_pool is not None:
            out["vm_pool"] = self.vm_pool.as_dict()
        return out

    def summary(self) -> str:
        text = (f"{len(self.unknown_volumes)} unknown volume(s), {len(self.unknown_files)} unknown file(s), "
                f"{len(self.missing)} missing, {len(self.differs)} different, {len(self.skipped)} skipped")
        if self.vm_pool is not None:
            text += f"; VM pool: {self.vm_pool.summary()}"
        return text


def row_state(vol: Volume) -> dict:
    return {"type": vol.type, "legality": vol.legality, "generation": vol.generation, "format": vol.format,
            "error": vol.error}


def compare(host_name: str, scan: dict, rows: dict[str, dict], *, busy: set[str] = frozenset(),
            elsewhere: set[str] = frozenset(), known_files: set[str] = frozenset()) -> Report:
    """The drift between a host's ``pool-scan`` and the rows of that host ({volume id: row_state}).
    ``busy``: ids an operation works on (left out); ``elsewhere``: ids other Host rows know;
    ``known_files``: names of files in the pool that are not volumes but are known (a VM's seed)."""
    if not scan.get("exists"):
        raise PoolMissing(f"host {host_name} has no pool directory {scan.get('pool')}: nothing compared")
    on_host = {v["id"]: v for v in scan["volumes"]}
    report = Report(host_name, scan["pool"], host_volumes=len(on_host), db_volumes=len(rows))
    for vol_id in sorted(rows):
        if vol_id in busy:
            report.skipped.append(vol_id)
            continue
        hv, db = on_host.get(vol_id), rows[vol_id]
        if hv is None:
            report.missing.append({"id": vol_id, "why": "no file of it in the pool"})
        elif hv["meta"] is None:
            report.missing.append({"id": vol_id, "why": f"its metadata is unusable: {hv['meta_error']}"})
        elif not hv["data"]:
            report.missing.append({"id": vol_id, "why": "its data file is missing"
                                   + (" (an unfinished copy's .part remains)" if hv["part"] else "")})
        else:
            diff = [f for f in FIELDS if hv["meta"][f] != db[f]]
            if diff:
                report.differs.append({"id": vol_id, "db": {f: db[f] for f in diff},
                                       "host": {f: hv["meta"][f] for f in diff}})
    for vol_id, hv in sorted(on_host.items()):
        if vol_id in rows:
            continue
        if vol_id in elsewhere:
            report.elsewhere.append(vol_id)
            continue
        files = [f["name"] for f in scan["files"] if f["name"].startswith(vol_id + ".")]
        report.unknown_volumes.append({"id": vol_id, "files": files, "meta": hv["meta"],
                                       "meta_error": hv["meta_error"]})
    report.unknown_files = [{k: f[k] for k in ("name", "kind", "size", "mode")} for f in scan["unknown"]
                            if not (f["name"] in known_files and f["kind"] == "file")]
    return report


def missing_error(host_name: str, why: str) -> str:
    return f"not usable on host {host_name}: {why} (found by a host scan)"


def scan(host, *, pool: str | None = None, busy: Callable[[], set[str]] = set,
         known_files: Callable[[], set[str]] = set) -> tuple[Report, dict[str, dict]]:
    """Ask the host for its pool (``pool``: the template pool by default, or the VM pool), then read the
    rows (in this order: a volume the host has was recorded before its files were made, so the host's
    list never runs ahead of the rows). ``busy`` and ``known_files`` are asked once the host has
    answered. A VM pool the host does not have (yet) is an empty pool: its rows, if any, are missing."""
    pool = pool or host.pool_path
    result = port.for_host(host).helper(hostops.pool_scan(pool), timeout=120)
    if not result.get("exists") and pool != host.pool_path:
        result = {"pool": pool, "exists": True, "volumes": [], "unknown": [], "files": []}
    busy_ids, known = busy(), known_files()
    # this pool's volumes only (Host.clean keeps the two pools apart; the dirname makes sure)
    rows = {str(v.pk): row_state(v) for v in Volume.objects.filter(host=host, path__startswith=pool + "/")
            if posixpath.dirname(v.path) == pool}
    on_host = {v["id"] for v in result.get("volumes", [])} - set(rows)
    elsewhere = {str(pk) for pk in Volume.objects.filter(pk__in=on_host).values_list("pk", flat=True)}
    return compare(host.name, result, rows, busy=busy_ids, elsewhere=elsewhere, known_files=known), rows


def apply(host, report: Report, rows: dict[str, dict], *, dry_run: bool = False) -> None:
    """Fix what is safe, each write conditional on the row being as it was read: mirror the host's
    metadata into differing rows, mark missing volumes ILLEGAL with an error, keep the host's unknown
    volumes for the admin. Adds what it changed to ``report.changed``; ``dry_run`` writes nothing."""
    report.dry_run = dry_run
    now = timezone.now()
    for d in report.differs:
        what = ", ".join(f"{f} {d['db'][f]} -> {d['host'][f]}" for f in d["db"])
        if dry_run or Volume.objects.filter(pk=d["id"], host=host, **_as_read(rows[d["id"]])).update(
                **d["host"], error="", updated=now):
            report.changed.append(f"volume {d['id']}: {what} (mirrored from the host)")
    for m in report.missing:
        error = missing_error(host.name, m["why"])
        row = rows[m["id"]]
        if row["legality"] == Legality.ILLEGAL and row["error"] == error:
            continue  # marked by an earlier scan
        if dry_run or Volume.objects.filter(pk=m["id"], host=host, **_as_read(row)).update(
                legality=Legality.ILLEGAL, error=error, updated=now):
            report.changed.append(f"volume {m['id']}: marked ILLEGAL: {error}")
    if dry_run:
        return
    seen = []
    for u in report.unknown_volumes:
        obj, _ = UnknownVolume.objects.update_or_create(
            host=host, volume_id=u["id"], defaults={"files": u["files"], "meta": u["meta"], "last_seen": now,
                                                    "pool": report.pool})
        seen.append(obj.pk)
    in_pool = UnknownVolume.objects.filter(host=host, pool=report.pool)
    if report.pool == host.pool_path:
        in_pool = UnknownVolume.objects.filter(host=host, pool__in=[report.pool, ""])
    in_pool.exclude(pk__in=seen).delete()  # gone from this pool meanwhile


def _as_read(row: dict) -> dict:
    return {k: row[k] for k in (*FIELDS, "error")}


def remove_unknown(unknown: UnknownVolume, *, reason: str, by: str) -> HostJob | None:
    """Remove a volume the host has and no Volume row knows, as a storage job (the helper's
    delete-volume), with who and why in the job and the log. Refused without a reason or if the volume
    is known now; None if the host no longer has it (the report row goes)."""
    reason = " ".join(reason.split())
    if not reason:
        raise RemovalRefused("removing a volume from a host needs a reason")
    host, vol_id = unknown.host, str(unknown.volume_id)
    pool = unknown.pool or host.pool_path
    if pool not in (host.pool_path, host.vm_pool_path):
        unknown.delete()
        raise RemovalRefused(f"volume {vol_id} was found in {pool}, no pool of host {host.name} now: not removed")
    if Volume.objects.filter(pk=vol_id).exists():
        unknown.delete()
        raise RemovalRefused(f"volume {vol_id} is known to vmseal now: it is not removed")
    scanned = port.for_host(host).helper(hostops.pool_scan(pool), timeout=120)
    if not any(v["id"] == vol_id for v in scanned.get("volumes", [])):
        unknown.delete()
        return None
    log.warning("host %s: removing unknown volume %s (%s) by %s: %s", host, vol_id, ", ".join(unknown.files), by,
                reason)
    timeout = settings.VMSEAL_STORAGE_TIMEOUT
    job = HostJob.create(host, JobAction.DELETE, target=f"volume:{vol_id}",
                         description=f"remove unknown volume, by {by}: {reason}"[:255],
                         deadline=timezone.now() + timedelta(seconds=timeout))
    args = hostops.delete_volume(pool, vol_id)
    runner.start(job, args)
    runner.wait(job, restart=lambda: runner.start(job, args))
    job.refresh_from_db()
    job.append_log(f"vmseal: unknown volume {vol_id} removed on request of {by}: {reason}\n")
    if job.status != JobStatus.DONE:
        raise runner.JobFailed(f"removing volume {vol_id} from {host} failed: {job.error}")
    if not job.host_cleared:
        runner.clear(job)
    unknown.delete()
    return job
