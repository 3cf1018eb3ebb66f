"""
Session-wide starting points for the tests that run real Kolibri processes.

Provisioning a server takes tens of seconds, so each kind of home is made once per
run and every test module starts from copies: a server on SQLite, a server on
PostgreSQL (a database of a throw-away cluster, copied per server), and a fresh
client. Registered as a pytest plugin by the suite's root ``conftest.py``; the
servers made from them come from :mod:`test.helpers.lab`.
"""

import contextlib
import os
import sys

import pytest

from sync_lab.instances import KolibriInstance
from sync_lab.lines import line_python
from sync_lab.lines import venv_dir
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


#: Set (as CI does) to fail, rather than skip, when a Kolibri line a test syncs
#: with is not installed in this checkout.
REQUIRE_LINES_ENV = "SYNC_LAB_REQUIRE_LINES"


def python_of_line(line):
    """
    The interpreter that runs Kolibri ``line``; the test is skipped when the line is
    not installed (``make venv KOLIBRI=<line>``), or fails under CI.

    :rtype: str
    """
    python = line_python(line)
    if python is None:
        message = (
            "Kolibri {} is not installed in {}: run `make venv KOLIBRI={}`".format(
                line, venv_dir(line), line
            )
        )
        if os.environ.get(REQUIRE_LINES_ENV) or os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip("{} (set {} to fail instead)".format(message, REQUIRE_LINES_ENV))
    return python


@pytest.fixture(scope="session")
def line_template(request, lab_templates_root):
    """
    ``line_template(kind, line)``: the run's ``"server"`` or ``"client"`` template
    home made by Kolibri ``line``, each made once; the running line's are the
    :func:`server_template` and :func:`client_template` fixtures. A server template
    is ``(home, facility)``, a client template the home.
    """
    made = {}
    with contextlib.ExitStack() as stack:

        def template(kind, line):
            python = python_of_line(line)
            if python == sys.executable:
                return request.getfixturevalue(kind + "_template")
            if (kind, line) not in made:
                instance = stack.enter_context(
                    KolibriInstance(
                        "{}-template-{}".format(kind, line),
                        root=lab_templates_root,
                        plugin=kind == "server",
                        python=python,
                    )
                )
                if kind == "server":
                    made[kind, line] = (
                        instance,
                        provision_server(instance, SERVER_RECORDS),
                    )
                else:
                    instance.migrate()
                    made[kind, line] = instance
            return made[kind, line]

        yield template
