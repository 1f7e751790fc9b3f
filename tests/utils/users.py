"""Users with exactly the permissions a test gives them."""


def user_with(name: str, *perms: str, staff: bool = False):
    """User ``name`` (password ``<name>-pass-1``) holding the permissions named by codename, nothing more."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(name, password=f"{name}-pass-1", is_staff=staff)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user
