"""An in-process fake of one hypervisor host, behind the app's host port (``hostjobs.port``).

It speaks the helper's protocol as ``hooks/vmseal_host.py`` does: every call's arguments are parsed by
the helper's own parser (a builder in ``hostops`` that the helper would refuse fails here too), job-start
answers running, job-status reports running, then done or failed with a result, a log and an exit
code, job-abort stops a running job, job-clear removes an ended one, refusals are VolumeRefused with the
helper's codes, and volume metadata changes by the same volume rules (``volumes.rules``). libvirt's side
is a VM (``domain``) and a pool. Nothing runs: a job's work is done, at once, on its first job-status.

Knobs a test sets:
    domain              the VM the template flow reads (state, disks; its XML: ``domain_xml``)
    domains             VMs defined by the VM flow (name: {"uuid", "state", "xml"}); a test may add one
    seal_fails(log, exit_code, result)   the next ``run`` jobs fail so
    undeletable         volume ids whose delete-volume fails (``ALL``: every volume)
    unreachable         the next N calls raise HostUnreachable
    when(name, fn)      call ``fn(args)`` when a verb (or a libvirt call: "domain_info", ...) arrives,
                        before it is answered (e.g. a cancel landing in a given step)
What it was asked: ``calls`` (every verb's argv, libvirt calls by name), ``started(verb)`` (the parsed
arguments of the jobs started with that verb), ``aborted`` (job ids), ``volumes`` (id: metadata),
``seeds`` (path: the seed ISO's bytes), ``files`` (job id: the files of its spec).
"""

from __future__ import annotations

import json
import sys

from hostjobs.errors import DomainNotFound, HostCommandFailed, HostUnreachable, VolumeRefused
from hostjobs.port import HostPort
from hostjobs.virt import Disk, DomainInfo, declared_problems, parse_disks
from volumes import rules

sys.modules.setdefault("vmseal_rules", rules)  # what the helper imports on a host (the same file)
from hooks import vmseal_host as helper  # noqa: E402

ALL = object()
GUEST_LOG = ('[   1.0] Performing "customize" ...\n'
             'vmseal-guest {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"}\n')
POOL_FULL_MESSAGE = "the template pool /var/lib/vmseal/templates on this host is full: virt-sysprep was stopped"


class Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class FakeHost(HostPort):
    def __init__(self, host=None, *, disks: int = 2):
        super().__init__(host)
        self.domain = DomainInfo("vm", "8f7c8a3e-0000-4000-8000-000000000001", "shut off",
                                 [Disk(f"vd{chr(97 + i)}", f"/var/lib/libvirt/images/vm-{i}.qcow2", "qcow2")
                                  for i in range(disks)])
        self.volumes: dict[str, dict] = {}
        self.domains: dict[str, dict] = {}
        self.seeds: dict[str, bytes] = {}
        self.files: dict[str, dict] = {}
        self.jobs: dict[str, dict] = {}
        self.calls: list[list[str]] = []
        self.aborted: list[str] = []
        self.undeletable: set[str] | object = set()
        self.unreachable = 0
        self.pool_exists = False
        self.volume_pools: dict[str, str] = {}  # volume id -> the pool create-volume put it in
        self.planted: dict[str, list[str]] = {}  # pool -> names of files no volume's (pool-scan's unknown)
        self._seal_failure: dict | None = None
        self._hooks: dict[str, list] = {}
        self._started: list = []

    # -- knobs ------------------------------------------------------------------------------------
    def seal_fails(self, log: str, exit_code: int = 1, result: dict | None = None) -> None:
        self._seal_failure = {"log": log, "exit_code": exit_code, "result": result}

    def when(self, name: str, fn) -> None:
        self._hooks.setdefault(name, []).append(fn)

    def started(self, verb: str) -> list:
        """The parsed arguments of every job started with ``verb``, in order (cleared ones too)."""
        return [a for a in self._started if a.cmd == verb]

    # -- the port ---------------------------------------------------------------------------------
    def _arrive(self, name: str, args) -> None:
        if self.unreachable > 0:
            self.unreachable -= 1
            raise HostUnreachable(f"cannot reach fake host ({name})")
        for fn in self._hooks.get(name, []):
            fn(args)

    def helper(self, args, *, timeout=600, input=None):
        args = list(args)
        self.calls.append(args)
        self._arrive(args[0], args)
        a = helper.parser().parse_args(args)  # the helper's own parser: a bad argv raises SystemExit
        try:
            return getattr(self, "_" + a.cmd.replace("-", "_"))(a, input)
        except Refused as e:
            raise VolumeRefused(str(e), detail=e.code) from None

    def domain_info(self, name):
        self.calls.append(["domain_info", name])
        self._arrive("domain_info", name)
        if name in self.domains:
            d = self.domains[name]
            return DomainInfo(name, d["uuid"], d["state"], parse_disks(d["xml"]))
        if name != self.domain.name:
            raise DomainNotFound(f"no VM of that name on the fake host ({name})")
        return DomainInfo(self.domain.name, self.domain.uuid, self.domain.state, list(self.domain.disks))

    def domain_xml(self, name):
        self.calls.append(["domain_xml", name])
        self._arrive("domain_xml", name)
        if name in self.domains:
            return self.domains[name]["xml"]
        if name != self.domain.name:
            raise DomainNotFound(f"no VM of that name on the fake host ({name})")
        disks = "".join(f"<disk type='file' device='disk'><driver name='qemu' type='{d.format}'/>"
                        f"<source file='{d.path}'/><target dev='{d.target}' bus='virtio'/></disk>"
                        for d in self.domain.disks)
        return (f"<domain type='kvm'><name>{self.domain.name}</name><uuid>{self.domain.uuid}</uuid>"
                "<memory unit='MiB'>256</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>"
                f"<devices>{disks}<interface type='network'><mac address='52:54:00:12:34:56'/>"
                "<source network='default'/><model type='virtio'/></interface></devices></domain>")

    def _domain(self, name):
        if name not in self.domains:
            raise DomainNotFound(f"no VM of that name on the fake host ({name})")
        return self.domains[name]

    def domain_state(self, name):
        self.calls.append(["domain_state", name])
        self._arrive("domain_state", name)
        return self.domain_info(name).state

    def define_domain(self, xml):
        import xml.etree.ElementTree as ET

        self.calls.append(["define_domain"])
        self._arrive("define_domain", xml)
        root = ET.fromstring(xml)
        name, uuid = root.findtext("name"), root.findtext("uuid")
        if name in self.domains and self.domains[name]["uuid"] != uuid:
            raise HostCommandFailed(f"domain {name} already exists with another uuid")
        self.domains[name] = {"uuid": uuid, "state": "shut off", "xml": xml}
        return uuid

    def start_domain(self, name):
        self.calls.append(["start_domain", name])
        self._arrive("start_domain", name)
        self._domain(name)["state"] = "running"

    def destroy_domain(self, name):
        self.calls.append(["destroy_domain", name])
        self._arrive("destroy_domain", name)
        self._domain(name)["state"] = "shut off"

    def undefine_domain(self, name):
        self.calls.append(["undefine_domain", name])
        self._arrive("undefine_domain", name)
        self._domain(name)
        del self.domains[name]

    def check_sources(self, domains):
        self.calls.append(["check_sources"])
        self._arrive("check_sources", domains)
        for d in domains:
            d.problems = declared_problems(d.disks)

    def list_domains(self, *, stopped_only=False):
        return [] if stopped_only and not self.domain.stopped else [self.domain_info(self.domain.name)]

    def ensure_pool(self):
        self.calls.append(["ensure_pool"])
        self._arrive("ensure_pool", None)
        self.pool_exists = True

    def refresh_pool(self):
        self.calls.append(["refresh_pool"])
        self._arrive("refresh_pool", None)

    # -- job verbs --------------------------------------------------------------------------------
    def _job_start(self, a, stdin):
        spec = json.loads(stdin)
        parsed = helper.parser().parse_args(spec["args"])
        if a.id not in self.jobs:  # starting a job twice never runs it twice
            self._started.append(parsed)
            self.files[a.id] = dict(spec.get("files") or {})
            self.jobs[a.id] = {"id": a.id, "status": "running", "progress": 0, "spec": spec, "log": "",
                               "result": None, "exit_code": None, "error": ""}
            self._arrive("job:" + spec["args"][0], spec["args"])
        return self._state(a.id)

    def _job_status(self, a, _):
        job = self._job(a.id)
        if job["status"] == "running":
            self._work(job)
        return self._state(a.id, a.log_offset)

    def _job_abort(self, a, _):
        job = self._job(a.id)
        if job["status"] in helper.TERMINAL:
            raise Refused("job_terminal", f"job {a.id} is {job['status']}: it cannot be aborted")
        job.update(status="aborted", error="aborted on request")
        self.aborted.append(a.id)
        return self._state(a.id)

    def _job_clear(self, a, _):
        job = self.jobs.get(a.id)
        if job is None:
            return {"id": a.id, "cleared": False}
        if job["status"] not in helper.TERMINAL:
            raise Refused("job_running", f"job {a.id} is not terminal: it cannot be cleared")
        del self.jobs[a.id]
        return {"id": a.id, "cleared": True}

    def _job(self, job_id):
        if job_id not in self.jobs:
            raise Refused("no_such_job", f"this host has no job {job_id}")
        return self.jobs[job_id]

    def _state(self, job_id, log_offset=0):
        job = self.jobs[job_id]
        out = {k: job[k] for k in ("id", "status", "progress", "result", "exit_code", "error")}
        return {**out, "log": job["log"][log_offset:], "log_offset": len(job["log"])}

    def _work(self, job):
        """The job's command, as the host's runner would have run it: its log, result and end."""
        args = job["spec"]["args"]
        a = helper.parser().parse_args(args)
        try:
            result, log, rc = self._run_verb(a)
        except (Refused, rules.RuleError) as e:
            result, log, rc = {"error": getattr(e, "code", "refused"), "message": str(e)}, "", 3
        except HostCommandFailed as e:
            result, log, rc = {"error": "failed", "message": str(e)}, "", 1
        code = result.pop("_exit", rc) if isinstance(result, dict) else rc
        job["log"] += log + json.dumps(result) + "\n"
        if code == 0:
            job.update(status="done", result=result, exit_code=0, progress=100)
        else:
            job.update(status="failed", result=result, exit_code=code,
                       error=result.get("message") or f"exit status {result.get('exit_code', code)}")

    def _run_verb(self, a):
        if a.cmd == "create-volume":
            backing = None
            if a.parent:  # thin: the helper's checks (the parent in another pool, SHARED and LEGAL)
                if not a.parent_pool or a.parent_pool == a.pool:
                    raise Refused("bad_pool", "a thin volume's parent is in another pool (--parent-pool)")
                parent = self._meta(a.parent)
                if (parent["type"], parent["legality"]) != (rules.SHARED, rules.LEGAL):
                    raise Refused("parent_not_shared", f"volume {a.parent} is {parent['type']}/{parent['legality']}")
                backing = f"{a.parent_pool}/{a.parent}.qcow2"
            meta = {"id": a.id, "type": rules.LEAF, "legality": rules.LEGAL, "generation": 0, "parent": a.parent,
                    "format": "qcow2"}
            self.volumes[a.id] = meta
            self.volume_pools[a.id] = a.pool
            return {**meta, "virtual_size": 1 << 30, "actual_size": 1 << 20, "path": f"{a.pool}/{a.id}.qcow2",
                    "backing": backing}, "", 0
        if a.cmd == "update-volume":
            meta = self._meta(a.id)
            new = rules.plan_update(meta, generation=a.generation, legality=a.legality, type=a.type)
            self.volumes[a.id] = new
            return {**new, "path": f"{a.pool}/{a.id}.qcow2"}, "", 0
        if a.cmd == "delete-volume":
            meta = self.volumes.get(a.id)
            if meta and meta["legality"] != rules.ILLEGAL:  # marked first, as the helper does
                self.volumes[a.id] = dict(meta, legality=rules.ILLEGAL,
                                          generation=rules.next_generation(meta["generation"]))
            if self.undeletable is ALL or a.id in self.undeletable:
                raise HostCommandFailed(f"PermissionError: [Errno 1] Operation not permitted: '{a.pool}/{a.id}.qcow2'")
            self.volumes.pop(a.id, None)
            return {"id": a.id, "deleted": True}, "", 0
        if a.cmd == "run":
            for vol_id in a.writable:
                rules.check_writable(self._meta(vol_id))
            argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
            log = "$ " + " ".join(argv) + "\n"
            if self._seal_failure:
                f = self._seal_failure
                return dict(f["result"] or {"exit_code": f["exit_code"]}, _exit=f["exit_code"]), log + f["log"], 1
            return {"exit_code": 0}, log + GUEST_LOG, 0
        raise AssertionError(f"the fake host does not run {a.cmd} as a job")

    def _meta(self, vol_id):
        if vol_id not in self.volumes:
            raise Refused("no_such_volume", f"no volume metadata for {vol_id}")
        return self.volumes[vol_id]

    # -- direct verbs -----------------------------------------------------------------------------
    def _write_seed(self, a, stdin):
        path = helper.seed_path(a.pool, a.uuid)
        if not stdin:
            raise Refused("bad_seed", "a seed image on stdin")
        self.seeds[path] = bytes(stdin)
        return {"path": path, "size": len(stdin)}

    def _delete_seed(self, a, _):
        path = helper.seed_path(a.pool, a.uuid)
        self.seeds.pop(path, None)
        return {"path": path, "deleted": True}

    def _volume_info(self, a, _):
        return {**self._meta(a.id), "path": f"{a.pool}/{a.id}.qcow2"}

    def _pool_scan(self, a, _):
        """A volume is in the pool ``volume_pools`` says (create-volume records it; a test may set it); one
        set in ``volumes`` by a test with no pool is in every pool. Seeds and ``planted`` files are unknown
        entries."""
        made_in = set(self.volume_pools.values())

        def here(vol_id):
            pool = self.volume_pools.get(vol_id)
            return pool == a.pool if pool else True

        vols = [{"id": i, "meta": m, "meta_error": None, "data": True, "part": False}
                for i, m in sorted(self.volumes.items()) if here(i)]
        names = sorted([p.rsplit("/", 1)[1] for p in self.seeds if p.rsplit("/", 1)[0] == a.pool]
                       + self.planted.get(a.pool, []))
        unknown = [{"name": n, "kind": "file", "size": 1, "mode": "0o600", "allocated": 4096} for n in names]
        exists = self.pool_exists or a.pool in made_in or bool(unknown)
        return {"pool": a.pool, "exists": exists, "volumes": vols, "unknown": unknown, "files": unknown}
