import json

from django.core.management.base import BaseCommand, CommandError

from hostjobs.errors import VmsealError
from hostjobs.models import Host
from sealing.reconcile import scan_host


class Command(BaseCommand):
    help = ("Compare a host's template pool and VM pool with the database: report the drift and fix what is safe "
            "(mirror the host's metadata, fail missing volumes and their templates). Never deletes a file.")

    def add_arguments(self, parser):
        parser.add_argument("host", help="host name or id")
        parser.add_argument("--json", action="store_true", dest="as_json")
        parser.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")

    def handle(self, *args, host, as_json=False, dry_run=False, **options):
        h = Host.objects.filter(name=host).first() or (Host.objects.filter(pk=host).first() if host.isdigit() else None)
        if h is None:
            raise CommandError(f"no host {host!r}")
        try:
            report = scan_host(h, dry_run=dry_run)
        except VmsealError as e:
            raise CommandError(f"{h.name}: {e.code}: {e}") from None
        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), sort_keys=True))
            return
        self.pool(report, dry_run)
        if report.vm_pool is not None:
            self.stdout.write("VM pool:")
            self.pool(report.vm_pool, dry_run)
        w = self.stdout.write
        w(f"{'drift' if report.drift else 'no drift'}: {report.summary()}"
          + ("; dry run, nothing changed" if dry_run else "; no file was deleted"))

    def pool(self, r, dry_run):
        w = self.stdout.write
        w(f"host {r.host}, pool {r.pool}: {r.host_volumes} volume(s) on the host, "
          f"{r.db_volumes} in the database")
        for u in r.unknown_volumes:
            meta = u["meta"] or {}
            what = (f"{meta['type']} {meta['legality']} gen {meta['generation']}" if meta
                    else f"metadata: {u['meta_error']}")
            w(f"unknown volume  {u['id']}  {', '.join(u['files'])}  ({what})")
        for f in r.unknown_files:
            w(f"unknown file    {f['name']}  ({f['kind']}, {f['size']} bytes, mode {f['mode']})")
        for m in r.missing:
            w(f"missing         {m['id']}  {m['why']}")
        for d in r.differs:
            w(f"differs         {d['id']}  " + "; ".join(f"{k}: database {d['db'][k]}, host {d['host'][k]}"
                                                        for k in d["db"]))
        for vol_id in r.elsewhere:
            w(f"other host's    {vol_id}  (a volume of another host entry with this pool)")
        for vol_id in r.skipped:
            w(f"skipped         {vol_id}  (an operation works on it)")
        for c in r.changed:
            w(("would change    " if dry_run else "changed         ") + c)
