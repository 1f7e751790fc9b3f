"""Read by gunicorn started in the checkout (benches, tests): vmseal's configuration, vmseal/gunicorn_conf.py."""

from vmseal.gunicorn_conf import *  # noqa: F403
