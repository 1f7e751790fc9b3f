from django.apps import AppConfig


class HostJobsConfig(AppConfig):
    name = "hostjobs"
    verbose_name = "Hosts and host jobs"
