"""gunicorn's configuration for vmseal: `gunicorn -c python:vmseal.gunicorn_conf ...` (README "Deploying");
gunicorn.conf.py in the checkout, which gunicorn reads from its working directory, is this module.

Before gunicorn starts its workers, the counter files the previous run's workers left for /metrics are
removed (metrics.multiproc): each worker counts in its own file, a scrape sums them."""

import os

from metrics import multiproc


def on_starting(server):
    path = multiproc.directory()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    if path.is_dir():
        multiproc.clean(path)
