from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

from hostjobs.callbacks import callback
from vmseal.api import router

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/callbacks/", callback, name="callbacks"),
    path("api/", include(router.urls)),
    path("api-auth/", include("rest_framework.urls")),
]
