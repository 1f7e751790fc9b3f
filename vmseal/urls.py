from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import IsAuthenticated

from hostjobs.callbacks import callback
from metrics.views import MetricsView
from vmseal.api import router

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/callbacks/", callback, name="callbacks"),
    path("metrics", MetricsView.as_view(), name="metrics"),  # Prometheus: token or VMSEAL_METRICS_ALLOW
    # the schema and its UI, like the rest of the API, for authenticated users only
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[IsAuthenticated]), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema", permission_classes=[IsAuthenticated]),
         name="api-docs"),
    path("api/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
]
