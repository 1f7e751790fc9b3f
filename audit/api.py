"""``GET /api/events/``: the audit trail, newest first, for users with ``audit.view_event``. Read-only."""

import django_filters
from rest_framework import permissions, serializers, viewsets

from audit.models import Event


class EventSerializer(serializers.ModelSerializer):
    user = serializers.CharField(source="username", read_only=True)
    object = serializers.SerializerMethodField()

    class Meta:
        model = Event
        fields = ["id", "when", "user", "user_id", "source", "action", "object", "outcome", "reason", "changes",
                  "request_id"]
        read_only_fields = fields

    def get_object(self, e) -> dict:
        return {"type": e.object_type, "id": e.object_id, "repr": e.object_repr}


class EventFilter(django_filters.FilterSet):
    user = django_filters.CharFilter(field_name="username")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    object = django_filters.CharFilter(method="filter_object", label="<type>:<id>, e.g. host:3")
    since = django_filters.IsoDateTimeFilter(field_name="when", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="when", lookup_expr="lt")

    class Meta:
        model = Event
        fields = ["user", "action", "source", "outcome", "object_type", "object_id", "object", "request_id",
                  "since", "until"]

    def filter_object(self, queryset, name, value):
        kind, _, pk = value.partition(":")
        queryset = queryset.filter(object_type=kind)
        return queryset.filter(object_id=pk) if pk else queryset


class CanViewEvents(permissions.BasePermission):
    """Who did what is for those allowed to see it: ``audit.view_event`` (superusers have it)."""

    def has_permission(self, request, view):
        return request.user.is_authenticated and request.user.has_perm("audit.view_event")


class EventViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Event.objects.all()
    serializer_class = EventSerializer
    permission_classes = [CanViewEvents]
    filterset_class = EventFilter
    ordering_fields = ["when", "id"]
    ordering = ["-when", "-id"]
