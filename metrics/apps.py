from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "metrics"
    verbose_name = "Metrics"

    def ready(self):
        from hostjobs.callbacks import callback_answered
        from metrics import counters

        callback_answered.connect(counters.on_callback_answered, dispatch_uid="vmseal-metrics-callbacks")
