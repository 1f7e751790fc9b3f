from django.db import models


class Metrics(models.Model):
    """No table: the holder of the ``metrics.view_metrics`` permission (GET /metrics)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("view_metrics", "Can read the Prometheus metrics (GET /metrics)")]

    def __str__(self):
        return "metrics"
