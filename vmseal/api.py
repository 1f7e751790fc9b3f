"""The REST API router: each app registers its viewsets here, and nowhere else."""

from rest_framework.routers import DefaultRouter

from hostjobs.api import HostJobViewSet, HostViewSet
from templates.api import TemplateViewSet
from vms.api import VmViewSet
from volumes.api import VolumeViewSet

router = DefaultRouter()
router.register("hosts", HostViewSet)
router.register("templates", TemplateViewSet)
router.register("volumes", VolumeViewSet)
router.register("jobs", HostJobViewSet)
router.register("vms", VmViewSet)
