#!/usr/bin/python3
"""vmseal's guest inspection and post-seal audit, on the hypervisor host. Read-only, one libguestfs
launch each. Needs Debian's python3-guestfs, so it runs with /usr/bin/python3; imports nothing of
the app. Prints one JSON object on its last line.

  inspect --disk PATH:FORMAT ...                     what OS the disks hold (for the Linux-only guard)
  audit   --disk PATH:FORMAT ... [--hostname NAME]   every identity item a seal must remove
"""

import argparse
import fnmatch
import json
import re
import sys

MAC = re.compile(r"([0-9a-f]{2}[:-]){5}[0-9a-f]{2}", re.I)


def open_disks(disks):
    import guestfs

    g = guestfs.GuestFS(python_return_dict=True)
    for spec in disks:
        path, _, fmt = spec.rpartition(":")
        g.add_drive_opts(path, format=fmt, readonly=1)
    g.launch()
    return g


def cmd_inspect(a):
    g = open_disks(a.disk)
    try:
        encrypted = [dev for dev, fs in g.list_filesystems().items() if fs == "crypto_LUKS"]
        roots = []
        for root in g.inspect_os():
            roots.append({
                "root": root,
                "type": g.inspect_get_type(root),
                "distro": g.inspect_get_distro(root),
                "product": g.inspect_get_product_name(root),
                "major": g.inspect_get_major_version(root),
                "arch": g.inspect_get_arch(root),
            })
        return {"roots": roots, "encrypted": encrypted}
    finally:
        g.close()


def mount_root(g):
    roots = g.inspect_os()
    if len(roots) != 1:
        raise SystemExit(json.dumps({"error": "inspection", "message": f"expected one OS, found {len(roots)}"}))
    root = roots[0]
    for mp, dev in sorted(g.inspect_get_mountpoints(root).items(), key=lambda kv: len(kv[0])):
        try:
            g.mount_ro(dev, mp)
        except RuntimeError:
            pass
    return root


def files(g, pattern):
    """Regular files matching a glob (one * per path component is enough here)."""
    try:
        return [p for p in g.glob_expand(pattern) if g.is_file(p)]
    except RuntimeError:
        return []


def read(g, path, limit=65536):
    size = g.filesize(path)
    return g.pread(path, min(size, limit), 0).decode("utf-8", "replace") if size else ""


def cmd_audit(a):
    g = open_disks(a.disk)
    items = []

    def check(item, ok, detail=""):
        items.append({"item": item, "ok": bool(ok), "detail": detail})

    try:
        mount_root(g)
        # machine-id: empty or "uninitialized" (systemd regenerates it at first boot)
        for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
            if g.is_symlink(path) or not g.is_file(path):
                check(f"machine-id {path}", True, "absent or a link")
                continue
            content = read(g, path).strip()
            check(f"machine-id {path}", content in ("", "uninitialized"), f"content {content[:40]!r}")
        keys = files(g, "/etc/ssh/ssh_host_*")
        check("ssh host keys", not keys, ", ".join(keys))
        rules = [p for p in ("/etc/udev/rules.d/70-persistent-net.rules",
                             "/etc/udev/rules.d/75-persistent-net-generator.rules") if g.is_file(p)]
        check("persistent net rules", not rules, ", ".join(rules))
        pinned = []
        for pattern, key in (("/etc/sysconfig/network-scripts/ifcfg-*", re.compile(r"^\s*(HWADDR|MACADDR)\s*=", re.M)),
                             ("/etc/NetworkManager/system-connections/*", re.compile(r"^\s*(cloned-)?mac-address\s*=",
                                                                                    re.M)),
                             ("/etc/network/interfaces", re.compile(r"^\s*hwaddress\b", re.M)),
                             ("/etc/network/interfaces.d/*", re.compile(r"^\s*hwaddress\b", re.M)),
                             ("/etc/netplan/*", re.compile(r"^\s*macaddress\s*:", re.M)),
                             ("/etc/systemd/network/*", re.compile(r"^\s*MACAddress\s*=", re.M))):
            for p in files(g, pattern):
                text = read(g, p)
                if key.search(text) and MAC.search(text):
                    pinned.append(p)
        check("MAC pinning in network configs", not pinned, ", ".join(pinned))
        hostname = read(g, "/etc/hostname").strip() if g.is_file("/etc/hostname") else ""
        check("hostname", hostname in ("", a.hostname),
              "" if hostname in ("", a.hostname) else f"/etc/hostname is {hostname!r}, expected {a.hostname!r}")
        leases = []
        for pattern in ("/var/lib/dhcp/*", "/var/lib/dhclient/*", "/var/lib/NetworkManager/*.lease",
                        "/var/lib/systemd/netif/leases/*", "/var/lib/dhcpcd/*"):
            leases += files(g, pattern)
        check("DHCP leases", not leases, ", ".join(leases))
        logs = []
        if g.is_dir("/var/log"):
            for rel in g.find("/var/log"):
                p = "/var/log/" + rel
                if g.is_file(p) and g.filesize(p) > 0:
                    logs.append(p)
        check("log files empty", not logs, ", ".join(logs[:20]))
        histories = []
        for home in ["/root"] + [h for h in g.glob_expand("/home/*") if g.is_dir(h)]:
            for name in g.ls(home) if g.is_dir(home) else []:
                if fnmatch.fnmatch(name, ".*history") or name == ".lesshst":
                    histories.append(f"{home}/{name}")
        check("shell histories", not histories, ", ".join(histories))
        seeds = [p for p in ("/var/lib/systemd/random-seed", "/var/lib/random-seed", "/var/lib/urandom/random-seed")
                 if g.is_file(p)]
        check("random seed", not seeds, ", ".join(seeds))
        lvm = g.is_file("/etc/lvm/devices/system.devices")
        check("LVM system.devices", not lvm, "/etc/lvm/devices/system.devices" if lvm else "")
        return {"passed": all(i["ok"] for i in items), "items": items}
    finally:
        g.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="vmseal_guest")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("inspect")
    i.add_argument("--disk", action="append", required=True)
    au = sub.add_parser("audit")
    au.add_argument("--disk", action="append", required=True)
    au.add_argument("--hostname", default="localhost")
    a = p.parse_args(argv)
    try:
        result = {"inspect": cmd_inspect, "audit": cmd_audit}[a.cmd](a)
    except RuntimeError as e:  # libguestfs errors
        print(json.dumps({"error": "guestfs", "message": str(e)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
