"""``GET /metrics``: Prometheus text format, for a token holding ``metrics.view_metrics`` or a client
address in VMSEAL_METRICS_ALLOW."""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.views import APIView

from metrics.collectors import DatabaseCollector


def allowed_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(n, strict=False) for n in settings.VMSEAL_METRICS_ALLOW]


class CanViewMetrics(BasePermission):
    """A client address on the allow-list (the TCP peer, REMOTE_ADDR: no forwarded header is believed), or
    an authenticated user with ``metrics.view_metrics``."""

    message = "reading the metrics needs the 'metrics.view_metrics' permission"

    def has_permission(self, request, view):
        try:
            peer = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
        except ValueError:
            peer = None
        if peer is not None and any(peer in net for net in allowed_networks()):
            return True
        return bool(request.user and request.user.is_authenticated and request.user.has_perm("metrics.view_metrics"))


class MetricsView(APIView):
    authentication_classes = [TokenAuthentication, SessionAuthentication]
    permission_classes = [CanViewMetrics]
    throttle_classes = []

    @extend_schema(exclude=True)
    def get(self, request):
        registry = CollectorRegistry()  # per scrape: the web workers' counter files, then the database
        MultiProcessCollector(registry, settings.VMSEAL_METRICS_DIR)
        registry.register(DatabaseCollector())
        return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
