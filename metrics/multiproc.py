"""Where the web workers' counters live between scrapes: prometheus_client's multiprocess mode.

Counters that move in a request (callbacks accepted and refused) are counted in whichever gunicorn
worker took the request; each worker writes its own file (``counter_<pid>.db``) in one directory and a
scrape, in any worker, sums them (prometheus_client.multiprocess.MultiProcessCollector). Everything
else /metrics shows is read from the database at scrape time (metrics.collectors), so it is the same
whichever worker or qcluster did the work.

The directory is private (0700, vmseal.private), ``VMSEAL_METRICS_DIR`` or ``<data dir>/metrics``, and
is emptied when gunicorn starts (vmseal/gunicorn_conf.py's on_starting: the counters then restart at zero,
which Prometheus's rate() takes as a counter reset). Stdlib only: settings.py and vmseal/gunicorn_conf.py use
it before Django is set up, and PROMETHEUS_MULTIPROC_DIR must be in the environment before
prometheus_client is first imported.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent


def directory() -> Path:
    data = Path(os.environ.get("VMSEAL_DATA_DIR", BASE_DIR / "var"))
    return Path(os.environ.get("VMSEAL_METRICS_DIR", data / "metrics")).resolve()


def clean(path: Path) -> int:
    """Remove the counter files of earlier runs (gunicorn's master, before it starts its workers)."""
    n = 0
    for f in path.glob("*.db"):
        f.unlink(missing_ok=True)
        n += 1
    return n
