"""Counters of events that happen in a web request, in prometheus_client's multiprocess mode (see
metrics.multiproc): the callbacks hosts push, accepted by kind and refused by reason."""

from prometheus_client import Counter

CALLBACKS_ACCEPTED = Counter("vmseal_callbacks_accepted", "Host notifications accepted (POST /api/callbacks/), "
                             "by kind: job, domain, daemon", ["kind"])
CALLBACKS_REFUSED = Counter("vmseal_callbacks_refused", "Host notifications refused (POST /api/callbacks/), by "
                            "reason: too_large, not_signed, stale, replayed, no_such_job, unknown_kind", ["reason"])


def on_callback_answered(sender, *, accepted: bool, reason: str, **kwargs) -> None:
    (CALLBACKS_ACCEPTED if accepted else CALLBACKS_REFUSED).labels(reason).inc()
