from django.apps import AppConfig


class VmsConfig(AppConfig):
    name = "vms"
    verbose_name = "VMs"

    def ready(self):
        from sealing import engine
        from vms import flow

        engine.register(flow.FLOW)  # the shared sweeper resumes orphaned VM flows
