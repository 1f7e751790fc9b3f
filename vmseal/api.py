"""The REST API router: each app registers its viewsets here, and nowhere else."""

from rest_framework.routers import DefaultRouter

from audit.api import EventViewSet
from hostjobs.api import HostJobViewSet, HostViewSet
from templates.api import TemplateViewSet
from vms.api import VmViewSet
from volumes.api import VolumeViewSet
from webhooks.api import WebhookViewSet

router = DefaultRouter()
router.register("hosts", HostViewSet)
router.register("templates", TemplateViewSet)
router.register("volumes", VolumeViewSet)
router.register("jobs", HostJobViewSet)
router.register("events", EventViewSet)
router.register("webhooks", WebhookViewSet)
router.register("vms", VmViewSet)
