from pathlib import Path

import pytest
from django.conf import settings

pytest_plugins = ["tests.fixtures.testhosts", "tests.fixtures.services", "tests.fixtures.api",
                  "tests.fixtures.hostjobs", "tests.fixtures.volumes", "tests.fixtures.templates",
                  "tests.fixtures.guests"]


def _remove_sqlite_test_db():
    # The test database is a file in WAL mode (the qcluster shares it), named per session. Django
    # removes the main file but not its -wal/-shm companions, which would bring old rows back.
    name = settings.DATABASES["default"].get("TEST", {}).get("NAME")
    if name and settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(name + suffix).unlink(missing_ok=True)


def _remove_orphaned_test_hosts():
    """Test hosts are named vmseal-e<pid of the pytest session> (and -f<pid><lane>, -k<pid>); remove
    those whose session is gone (killed before its teardown ran)."""
    import os
    import re
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "testhosts.py"
    names = subprocess.run([sys.executable, str(script), "list"], capture_output=True, text=True).stdout.split()
    for name in names:
        m = re.fullmatch(r"vmseal-[efk](\d+)[a-z]?", name)  # session, fault-matrix and re-keyed hosts
        if m and not Path(f"/proc/{m.group(1)}").exists() and int(m.group(1)) != os.getpid():
            subprocess.run([sys.executable, str(script), "down", name], capture_output=True)


def pytest_sessionstart(session):
    _remove_sqlite_test_db()
    _remove_orphaned_test_hosts()


def pytest_sessionfinish(session, exitstatus):
    _remove_sqlite_test_db()


@pytest.fixture(scope="session")
def django_db_setup(request, django_test_environment, django_db_blocker, django_db_keepdb,
                    django_db_modify_db_settings):
    """Always create the test database. pytest-django creates it only for aliases that collected
    ``django_db`` tests ask for; the end-to-end tests use it from module fixtures (shared with the
    qcluster), and without this they would silently run against the development database."""
    from django.test.utils import setup_databases, teardown_databases

    with django_db_blocker.unblock():
        config = setup_databases(verbosity=request.config.option.verbose, interactive=False,
                                 keepdb=django_db_keepdb, aliases={"default"})
    yield
    with django_db_blocker.unblock():
        teardown_databases(config, verbosity=request.config.option.verbose, keepdb=django_db_keepdb)


@pytest.fixture(autouse=True)
def _own_throttle_history(monkeypatch):
    """Each test starts with no request history for the API throttles (users' ids repeat across tests)."""
    import uuid

    from django.core.cache.backends.locmem import LocMemCache
    from rest_framework.throttling import SimpleRateThrottle

    monkeypatch.setattr(SimpleRateThrottle, "cache", LocMemCache(f"throttle-{uuid.uuid4()}", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The fault matrix (tests/test_faults.py), cell x phase -> pass/fail, when it ran."""
    import sys

    faults = sys.modules.get("tests.test_faults")
    lines = faults.matrix_summary() if faults else []
    if lines:
        terminalreporter.section("fault matrix")
        for line in lines:
            terminalreporter.write_line(line)
