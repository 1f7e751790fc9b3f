#!/usr/bin/python3
"""Read files from disk images in ONE read-only libguestfs launch (tests only).

stdin: {"disks": ["/path/a.qcow2", ...], "files": ["/etc/hostname", ...], "dirs": ["/etc/ssh", ...]}
Each disk's filesystem is mounted on its own (no inspection), so a /var disk's files are read as
"/log/syslog". stdout: {disk: {"files": {path: {"size": n, "head": text} | {"link": target} | null},
"dirs": {path: [names] | null}}}
Runs with Debian's /usr/bin/python3 (python3-guestfs), on the host, as root.
"""
import json
import sys

import guestfs

req = json.load(sys.stdin)
g = guestfs.GuestFS(python_return_dict=True)
for d in req["disks"]:
    g.add_drive_opts(d, format="qcow2", readonly=1)
g.launch()
out = {}
for disk, dev in zip(req["disks"], g.list_devices(), strict=False):
    g.mount_ro(dev, "/")
    files, dirs = {}, {}
    for f in req.get("files", []):
        if g.is_symlink(f):
            files[f] = {"link": g.readlink(f)}
        elif g.is_file(f):
            data = g.pread(f, 4096, 0) if g.filesize(f) else b""
            files[f] = {"size": g.filesize(f), "head": data.decode("utf-8", "replace")}
        else:
            files[f] = None
    for d in req.get("dirs", []):
        dirs[d] = sorted(g.ls(d)) if g.is_dir(d) else None
    g.umount_all()
    out[disk] = {"files": files, "dirs": dirs}
g.shutdown()
g.close()
print(json.dumps(out))
