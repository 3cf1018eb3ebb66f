"""
Session-wide starting points for the tests that run real Kolibri processes.

Provisioning a server takes tens of seconds, so each kind of home is made once per
run and every test module starts from copies: a server on SQLite, a server on
PostgreSQL (a database of a throw-away cluster, copied per server), and a fresh
client. Registered as a pytest plugin by the suite's root ``conftest.py``; the
servers made from them come from :mod:`test.helpers.lab`.
"""

import os

import pytest

from sync_lab.instances import KolibriInstance
from sync_lab.postgres import PostgresServer
from sync_lab.postgres import postgres_installed
from sync_lab.scenario import provision_server

#: Set (as CI does) to fail, rather than skip, when PostgreSQL is not installed.
REQUIRE_POSTGRES_ENV = "SYNC_LAB_REQUIRE_POSTGRES"

#: Records of learner activity on every template server.
SERVER_RECORDS = 300


# what the process-level tests measured, for the run's summary
_measurements = []


@pytest.fixture(scope="session")
def lab_report():
    """
    Note a measurement for the end of the run's output, e.g.
    ``lab_report("longest request, 4 clients, SQLite", "1.9 s")``.
    """

    def record(what, value):
        _measurements.append((what, value))

    return record


def pytest_terminal_summary(terminalreporter):
    if _measurements:
        terminalreporter.section("sync lab measurements")
        for what, value in _measurements:
            terminalreporter.write_line("{}: {}".format(what, value))


@pytest.fixture(scope="session")
def lab_templates_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lab-templates")


@pytest.fixture(scope="session")
def server_template(lab_templates_root):
    """A provisioned SQLite server home with a facility's activity, never started."""
    with KolibriInstance(
        "server-template", root=lab_templates_root, plugin=True
    ) as template:
        facility = provision_server(template, SERVER_RECORDS)
        yield template, facility


@pytest.fixture(scope="session")
def client_template(lab_templates_root):
    """A migrated, unprovisioned home: a fresh device about to pull its facility."""
    with KolibriInstance("client-template", root=lab_templates_root) as template:
        template.migrate()
        yield template


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL cluster on 127.0.0.1, for the whole run."""
    if not postgres_installed() and not os.environ.get(REQUIRE_POSTGRES_ENV):
        pytest.skip(
            "PostgreSQL is not installed (set {} to fail instead)".format(
                REQUIRE_POSTGRES_ENV
            )
        )
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server_template(postgres, lab_templates_root):
    """
    A server home provisioned into its own PostgreSQL database, never started:
    ``(home, database, facility)``. :func:`test.helpers.lab.new_server` copies
    both.
    """
    database = "kolibri_template"
    postgres.create_database(database)
    with KolibriInstance(
        "pg-server-template",
        root=lab_templates_root,
        plugin=True,
        options=postgres.kolibri_options(database),
    ) as template:
        facility = provision_server(template, SERVER_RECORDS)
        yield template, database, facility
