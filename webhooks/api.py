"""``/api/webhooks/``: registering webhooks (the model's permissions, reads included), and
``GET /api/webhooks/<id>/deliveries/`` (paginated). The secret is write-only: no answer ever has it."""

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers, viewsets
from rest_framework.decorators import action

from webhooks.models import Delivery, Webhook


class WebhookSerializer(serializers.ModelSerializer):
    secret = serializers.CharField(write_only=True, min_length=16, max_length=128, trim_whitespace=False,
                                   help_text="signs each POST (HMAC-SHA256); write-only, never returned")

    class Meta:
        model = Webhook
        fields = ["id", "name", "url", "events", "secret", "active", "created"]
        read_only_fields = ["created"]


class DeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = Delivery
        fields = ["id", "event", "status", "tries", "last_status", "last_error", "created", "last_try", "next_try",
                  "delivered", "payload"]
        read_only_fields = fields


class WebhookPermissions(permissions.DjangoModelPermissions):
    """Reading needs ``view_webhook`` too: a webhook's URL is its owner's business."""

    perms_map = {**permissions.DjangoModelPermissions.perms_map,
                 "GET": ["%(app_label)s.view_%(model_name)s"], "HEAD": ["%(app_label)s.view_%(model_name)s"]}


class WebhookViewSet(viewsets.ModelViewSet):
    queryset = Webhook.objects.all()
    serializer_class = WebhookSerializer
    permission_classes = [WebhookPermissions]
    filterset_fields = ["name", "active"]
    ordering_fields = ["name", "created"]

    @extend_schema(responses=DeliverySerializer(many=True))  # a page of deliveries (the schema shows the page)
    @action(detail=True, methods=["get"], serializer_class=DeliverySerializer, filter_backends=[])
    def deliveries(self, request, pk=None):
        hook = self.get_object()
        page = self.paginate_queryset(hook.deliveries.all())
        return self.get_paginated_response(DeliverySerializer(page, many=True).data)
