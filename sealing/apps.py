from django.apps import AppConfig


class SealingConfig(AppConfig):
    name = "sealing"
