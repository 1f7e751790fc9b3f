from django.apps import AppConfig


class SealingConfig(AppConfig):
    name = "sealing"

    def ready(self):
        from django_q.signals import post_spawn

        from hostjobs.callbacks import host_event
        from sealing import engine, flow, signals

        engine.register(flow.FLOW)

        host_event.connect(signals.on_host_event, dispatch_uid="vmseal-host-event")
        post_spawn.connect(signals.on_worker_spawn, dispatch_uid="vmseal-sweep-on-spawn")
