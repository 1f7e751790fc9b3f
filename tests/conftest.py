pytest_plugins = ["tests.fixtures.hostjobs", "tests.fixtures.sealing"]
