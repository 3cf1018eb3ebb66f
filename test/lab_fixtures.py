"""
Session-wide starting points for the tests that run real Kolibri processes.

Provisioning a server takes tens of seconds, so each kind of home is made once per
run and every test module starts from copies: a server on SQLite, a server on
PostgreSQL (a database of a throw-away cluster, copied per server), and a fresh
client. Registered as a pytest plugin by the suite's root ``conftest.py``.
"""

import os
import uuid

import pytest

from sync_lab.instances import KolibriInstance
from sync_lab.postgres import PostgresServer
from sync_lab.postgres import find_bindir
from sync_lab.scenario import provision_server

#: Set (as CI does) to fail, rather than skip, when PostgreSQL is not installed.
REQUIRE_POSTGRES_ENV = "SYNC_LAB_REQUIRE_POSTGRES"

#: Records of learner activity on every template server.
SERVER_RECORDS = 300

#: Both of the plugin's switches on: every server stage it can move runs in a job,
#: however small (the lab's syncs are small enough to run inline otherwise).
BACKGROUND_EVERYTHING = {
    "BACKGROUND_INITIALIZATION": True,
    "BACKGROUND_FINALIZATION": True,
    "INLINE_STAGE_RECORDS": 0,
}


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
    if find_bindir() is None and not os.environ.get(REQUIRE_POSTGRES_ENV):
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
    ``(home, database, facility)``. :func:`postgres_server` copies both.
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


def postgres_server(postgres, template, name, root, **kwargs):
    """
    A new server instance on a new copy of the template's database.

    :param template: The :func:`postgres_server_template` fixture's value
    :param kwargs: As for :class:`~sync_lab.instances.KolibriInstance`
    :rtype: sync_lab.instances.KolibriInstance
    """
    home, template_database, _ = template
    database = "kolibri_{}".format(uuid.uuid4().hex[:12])
    postgres.create_database(database, template=template_database)
    options = dict(kwargs.pop("options", None) or {})
    options.update(postgres.kolibri_options(database))
    return KolibriInstance.copy_of(home, name, root=root, options=options, **kwargs)


#: The databases a lab server can keep its data in, as :func:`new_server` names them.
DATABASES = ("postgresql", "sqlite")


def new_server(request, database, name, root, **kwargs):
    """
    A server instance, not started, from the run's template on ``database``.

    :param request: The asking fixture's ``request``, to reach the templates
    :param database: ``"sqlite"`` or ``"postgresql"``; the PostgreSQL tests are
        skipped when PostgreSQL is not installed
    :param kwargs: As for :class:`~sync_lab.instances.KolibriInstance`
    :return: The server and its facility
    :rtype: tuple
    """
    if database == "sqlite":
        template, facility = request.getfixturevalue("server_template")
        server = KolibriInstance.copy_of(template, name, root=root, **kwargs)
        return server, facility
    if database == "postgresql":
        template = request.getfixturevalue("postgres_server_template")
        postgres = request.getfixturevalue("postgres")
        return postgres_server(postgres, template, name, root, **kwargs), template[2]
    raise ValueError(
        "database {!r}: choose one of {}".format(database, ", ".join(DATABASES))
    )
