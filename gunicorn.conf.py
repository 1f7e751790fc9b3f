"""gunicorn's configuration for vmseal (read from the working directory, or `gunicorn -c <this file>`).

Before gunicorn starts its workers, the counter files the previous run's workers left for /metrics are
removed (metrics.multiproc): each worker counts in its own file, a scrape sums them."""

import os

from metrics import multiproc


def on_starting(server):
    path = multiproc.directory()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if path.is_dir():
        multiproc.clean(path)
