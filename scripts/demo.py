"""The demo behind scripts/demo: set up, serve, and clean up on exit.

Data lives in ./var/demo (VMSEAL_DATA_DIR). Options: --port N (default 8000), --no-serve (set up,
print what was made, and exit, leaving the demo host up; `scripts/testhosts.py down vmseal-demo`
removes it).
"""

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BRIDGE, CALLBACK_PORT = "10.211.0.1", 8001  # scripts/testhosts.py's bridge: the demo host reaches us there
os.environ.setdefault("VMSEAL_DATA_DIR", str(ROOT / "var" / "demo"))
os.environ.setdefault("VMSEAL_CALLBACK_URL", f"http://{BRIDGE}:{CALLBACK_PORT}/api/callbacks/")
os.environ.setdefault("VMSEAL_ALLOWED_HOSTS", f"localhost,127.0.0.1,{BRIDGE}")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vmseal.settings")
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import django  # noqa: E402

django.setup()

import guestdisk  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

from hostjobs.models import Host  # noqa: E402
from hostjobs.transport import app_public_key  # noqa: E402
from vmseal.private import write_private  # noqa: E402

HOST = "vmseal-demo"
TESTHOSTS = [sys.executable, str(ROOT / "scripts" / "testhosts.py")]


def host_exec(*argv, check=True):
    return subprocess.run([*TESTHOSTS, "exec", HOST, "--", *argv], check=check, capture_output=True, text=True)


def setup() -> dict:
    call_command("migrate", verbosity=0)
    info = json.loads(subprocess.run([*TESTHOSTS, "up", HOST], check=True, capture_output=True, text=True).stdout)
    keys = Path(info["authorized_keys"])
    if app_public_key() not in keys.read_text():
        with open(keys, "a") as f:
            f.write(app_public_key() + "\n")
    host, _ = Host.objects.update_or_create(
        name="demo", defaults={"address": info["address"], "port": 22, "ssh_user": "root",
                               "host_key": " ".join(info["host_key"].split()[:2]),
                               "guestfs_backend_settings": "force_tcg"})
    if host_exec("virsh", "-c", "qemu:///system", "domstate", "demo-vm", check=False).returncode != 0:
        images = Path(info["root"]) / "lib-libvirt" / "images"
        disks = ["/var/lib/libvirt/images/" + p.name for p in guestdisk.build(images, "two", "demo-vm")]
        (images / "demo-vm.xml").write_text(guestdisk.domain_xml("demo-vm", disks))
        host_exec("virsh", "-c", "qemu:///system", "define", "/var/lib/libvirt/images/demo-vm.xml")
    password_file = Path(settings.DATA_DIR) / "admin-password"
    if not User.objects.filter(username="admin").exists():
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", "admin@localhost", password)
        write_private(password_file, password + "\n")  # 0600 from the start
    call_command("host_install", "demo")  # job runner + libvirt hooks, callbacks to us
    token, _ = Token.objects.get_or_create(user=User.objects.get(username="admin"))
    return {"host": host, "password": password_file.read_text().strip() if password_file.exists() else "(unchanged)",
            "token": token.key}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--no-serve", action="store_true")
    args = ap.parse_args()
    made = setup()
    url = f"http://127.0.0.1:{args.port}"
    name = time.strftime("demo-%Y%m%d-%H%M%S")  # templates of earlier runs stay in ./var/demo
    print(f"""
vmseal demo
  admin:   {url}/admin/   user admin, password {made['password']}
  API:     {url}/api/     header 'Authorization: Token {made['token']}'
  host:    'demo' (id {made['host'].pk}) = test host {HOST} at {made['host'].address}, VM 'demo-vm' (2 disks, shut off)
  try:     curl -s -X POST -H 'Authorization: Token {made['token']}' -H 'Content-Type: application/json' \\
             -d '{{"name": "{name}", "host": {made['host'].pk}, "vm": "demo-vm", "seal": true}}' \\
             {url}/api/templates/
""", flush=True)
    if args.no_serve:
        return 0
    py = str(ROOT / ".venv" / "bin" / "python")
    procs = [
        subprocess.Popen([py, "manage.py", "qcluster"], cwd=ROOT, start_new_session=True),
        subprocess.Popen([py, "manage.py", "runserver", "--noreload", "--insecure", f"127.0.0.1:{args.port}"], cwd=ROOT,
                         start_new_session=True),
        # where the demo host pushes job ends and libvirt events
        subprocess.Popen([py, "manage.py", "runserver", "--noreload", f"{BRIDGE}:{CALLBACK_PORT}"], cwd=ROOT,
                         start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        subprocess.run([*TESTHOSTS, "down", HOST], check=False)
        print("demo stopped; the demo host is removed (data kept in var/demo)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
