import sys
import time

from django.core.management.base import BaseCommand, CommandError

from hostjobs.models import HostJob, JobStatus

EXIT = {JobStatus.DONE: 0, JobStatus.FAILED: 1, JobStatus.ABORTED: 2}


class Command(BaseCommand):
    help = "Follow a job (and its host jobs) until it ends. Exit status: 0 done, 1 failed, 2 aborted."

    def add_arguments(self, parser):
        parser.add_argument("job")
        parser.add_argument("--interval", type=float, default=1.0)

    def handle(self, *args, job, interval, **options):
        try:
            op = HostJob.objects.get(pk=job)
        except (HostJob.DoesNotExist, ValueError, Exception):
            raise CommandError(f"no job {job!r}") from None
        seen = None
        while True:
            op.refresh_from_db()
            current = op.children.exclude(status__in=[JobStatus.DONE]).order_by("created").first()
            line = (f"{op.action} {op.status:8} {self._bar(op.progress)} {op.progress:3d}%"
                    + (f"  {current.action} {current.description[:50]} [{current.status}]" if current else ""))
            if line != seen:
                self.stdout.write(line)
                seen = line
            if op.is_terminal:
                break
            time.sleep(interval)
        if op.error:
            self.stdout.write(f"error: {op.error}")
        sys.exit(EXIT[op.status])

    @staticmethod
    def _bar(p, width=20):
        n = int(width * p / 100)
        return "[" + "#" * n + "." * (width - n) + "]"
