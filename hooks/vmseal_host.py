#!/usr/bin/python3
"""vmseal's helper on a hypervisor host. Stdlib only (plus Debian's python3-guestfs where noted);
it imports nothing of the app. Shipped next to ``vmseal_rules.py`` (the app's volumes/rules.py).

Every subcommand prints one JSON object on its last stdout line. On refusal it prints
``{"error": <code>, "message": ...}`` and exits 3; other failures exit 1.

Volumes live in a pool directory as ``<id>.qcow2`` with a metadata file ``<id>.meta`` beside it
(JSON: id, type, legality, generation, parent, format). The metadata file is the truth; it is
replaced atomically (write + fsync + rename). A SHARED volume's data file is made read-only.

  create-volume --pool P --id ID --source PATH --source-format FMT
  update-volume --pool P --id ID --generation N [--legality L] [--type T]
  delete-volume --pool P --id ID
  volume-info   --pool P --id ID
  run [--writable ID]... [--pool P] [--env K=V]... -- ARGV...   (refuses SHARED volumes, then runs ARGV)
"""

import argparse
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmseal_rules as rules  # noqa: E402

ID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Refused(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def vol_paths(pool, vol_id):
    if not ID_RE.match(vol_id):
        raise Refused("bad_volume_id", f"not a volume id: {vol_id!r}")
    if not os.path.isabs(pool):
        raise Refused("bad_pool", "pool path must be absolute")
    return os.path.join(pool, vol_id + ".qcow2"), os.path.join(pool, vol_id + ".meta")


def read_meta(meta_path):
    try:
        with open(meta_path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise Refused("no_such_volume", f"no volume metadata at {meta_path}") from None


def write_meta(meta_path, meta):
    tmp = meta_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, meta_path)
    dfd = os.open(os.path.dirname(meta_path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def image_info(path):
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True,
                         text=True).stdout
    info = json.loads(out)
    return {"virtual_size": info.get("virtual-size", 0), "actual_size": info.get("actual-size", 0),
            "format": info.get("format")}


def cmd_create(a):
    data, meta_path = vol_paths(a.pool, a.id)
    os.makedirs(a.pool, exist_ok=True)
    if os.path.exists(meta_path):
        meta = read_meta(meta_path)
        rules.check_writable(meta)  # never overwrite a SHARED volume, even on a retried copy
    # Creation in progress: ILLEGAL until the data is complete (vdsm does the same).
    meta = {"id": a.id, "type": rules.LEAF, "legality": rules.ILLEGAL, "generation": 0, "parent": None,
            "format": "qcow2"}
    write_meta(meta_path, meta)
    tmp = data + ".part"
    # -U: read the source without taking its lock-holder's place; -n is not used: we create the target.
    proc = subprocess.run(["qemu-img", "convert", "-p", "-f", a.source_format, "-O", "qcow2", a.source, tmp],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise RuntimeError("qemu-img convert failed: " + (proc.stderr.strip() or proc.stdout.strip()))
    os.replace(tmp, data)
    meta["legality"] = rules.LEGAL
    write_meta(meta_path, meta)
    return {**meta, **image_info(data), "path": data}


def cmd_update(a):
    data, meta_path = vol_paths(a.pool, a.id)
    meta = read_meta(meta_path)
    new = rules.plan_update(meta, generation=a.generation, legality=a.legality, type=a.type)
    if new["type"] == rules.SHARED:
        os.chmod(data, 0o444)
    write_meta(meta_path, new)
    return {**new, "path": data, "mode": oct(os.stat(data).st_mode & 0o777)}


def cmd_delete(a):
    data, meta_path = vol_paths(a.pool, a.id)
    if os.path.exists(meta_path):
        meta = read_meta(meta_path)
        if meta["legality"] != rules.ILLEGAL:
            # Mark ILLEGAL first: if removing the data fails, what stays behind is never usable.
            meta = dict(meta, legality=rules.ILLEGAL, generation=rules.next_generation(meta["generation"]))
            write_meta(meta_path, meta)
    for p in (data + ".part", data):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    try:
        os.unlink(meta_path)
    except FileNotFoundError:
        pass
    return {"id": a.id, "deleted": True}


def cmd_info(a):
    data, meta_path = vol_paths(a.pool, a.id)
    meta = read_meta(meta_path)
    st = os.stat(data)
    return {**meta, "path": data, "mode": oct(st.st_mode & 0o777), **image_info(data)}


def cmd_run(a):
    for vol_id in a.writable:
        _data, meta_path = vol_paths(a.pool, vol_id)
        rules.check_writable(read_meta(meta_path))
    env = dict(os.environ)
    for kv in a.env:
        k, _, v = kv.partition("=")
        env[k] = v
    argv = a.argv[1:] if a.argv and a.argv[0] == "--" else a.argv
    if not argv:
        raise Refused("no_command", "run needs a command after --")
    sys.stdout.flush()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return {"exit_code": proc.returncode, "_exit": proc.returncode}


def main(argv=None):
    p = argparse.ArgumentParser(prog="vmseal_host")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create-volume")
    c.add_argument("--pool", required=True)
    c.add_argument("--id", required=True)
    c.add_argument("--source", required=True)
    c.add_argument("--source-format", required=True, choices=["raw", "qcow2"])
    u = sub.add_parser("update-volume")
    u.add_argument("--pool", required=True)
    u.add_argument("--id", required=True)
    u.add_argument("--generation", type=int, required=True)
    u.add_argument("--legality", choices=rules.LEGALITIES)
    u.add_argument("--type", choices=rules.TYPES)
    for name in ("delete-volume", "volume-info"):
        d = sub.add_parser(name)
        d.add_argument("--pool", required=True)
        d.add_argument("--id", required=True)
    r = sub.add_parser("run")
    r.add_argument("--pool", default="/")
    r.add_argument("--writable", action="append", default=[])
    r.add_argument("--env", action="append", default=[])
    r.add_argument("argv", nargs=argparse.REMAINDER)
    a = p.parse_args(argv)
    handler = {"create-volume": cmd_create, "update-volume": cmd_update, "delete-volume": cmd_delete,
               "volume-info": cmd_info, "run": cmd_run}[a.cmd]
    try:
        result = handler(a)
    except (Refused, rules.RuleError) as e:
        print(json.dumps({"error": getattr(e, "code", "refused"), "message": str(e)}))
        return 3
    except Exception as e:  # noqa: BLE001 - the app gets the message, the exit code says failure
        print(json.dumps({"error": "failed", "message": f"{type(e).__name__}: {e}"}))
        return 1
    code = result.pop("_exit", 0)
    print(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
