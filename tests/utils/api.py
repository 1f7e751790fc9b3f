"""API clients for end-to-end tests, and registering a test host through the API."""


def superuser_api(name: str):
    """A superuser ``name`` and an API client authenticated as them: (user, client)."""
    from django.contrib.auth.models import User
    from rest_framework.test import APIClient

    user = User.objects.create_superuser(name, f"{name}@example.test", f"{name}-pass-1")
    client = APIClient()
    client.force_authenticate(user)
    return user, client


def add_host(api, th, name: str, pool: str, **extra):
    """Register the test host ``th`` as Host ``name`` with its own pool, through the API (appliances under
    TCG); the Host row."""
    from hostjobs.models import Host

    r = api.post("/api/hosts/", {"name": name, "address": th.address, "host_key": th.host_key,
                                 "guestfs_backend_settings": "force_tcg", "pool_path": pool, **extra}, format="json")
    assert r.status_code == 201, r.content
    return Host.objects.get(pk=r.json()["id"])
