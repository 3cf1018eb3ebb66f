"""
Session-wide starting points for the tests that run real Kolibri processes.

Provisioning a server takes tens of seconds, so each kind of home is made once per
run and every test module starts from copies (:mod:`sync_lab.harness.templates`):
a server on SQLite, a server on PostgreSQL (a database of a throw-away cluster,
copied per server), and a fresh client; and the same made by another Kolibri line.
Tests that need programs the lab does not always have (PostgreSQL, uwsgi and
nginx) are skipped without them, unless an environment variable asks to fail.
Registered as a pytest plugin by the suite's root ``conftest.py``.
"""

import contextlib
import os
import sys

import pytest

from sync_lab.harness.lines import line_python
from sync_lab.harness.lines import venv_dir
from sync_lab.harness.postgres import PostgresServer
from sync_lab.harness.postgres import postgres_installed
from sync_lab.harness.templates import Templates
from sync_lab.harness.uwsgi_server import missing_programs

#: Set (as CI does) to fail, rather than skip, when PostgreSQL is not installed.
REQUIRE_POSTGRES_ENV = "SYNC_LAB_REQUIRE_POSTGRES"
#: Set (as CI does) to fail, rather than skip, when uwsgi or nginx is not installed.
REQUIRE_UWSGI_ENV = "SYNC_LAB_REQUIRE_UWSGI"

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


def pytest_sessionfinish(session):
    """In a pytest-xdist worker: hand this worker's measurements to the controller."""
    worker_output = getattr(session.config, "workeroutput", None)
    if worker_output is not None:
        worker_output["lab_measurements"] = list(_measurements)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """In pytest-xdist's controller: gather a finished worker's measurements."""
    worker_output = getattr(node, "workeroutput", None) or {}
    _measurements.extend(tuple(m) for m in worker_output.get("lab_measurements", ()))


def pytest_terminal_summary(terminalreporter):
    if _measurements:
        terminalreporter.section("sync lab measurements")
        for what, value in _measurements:
            terminalreporter.write_line("{}: {}".format(what, value))


@pytest.fixture(scope="session")
def lab_templates_root(tmp_path_factory):
    return tmp_path_factory.mktemp("lab-templates")


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
def uwsgi_and_nginx():
    """
    Ask for it to run a server as kolibri-server does, nginx in front of uwsgi
    (:class:`~sync_lab.harness.uwsgi_server.UwsgiKolibriInstance`): the test is
    skipped when uwsgi is not installed in this environment (``make venv``
    installs it) or nginx is not on the machine, or fails if
    ``SYNC_LAB_REQUIRE_UWSGI`` is set.
    """
    missing = missing_programs()
    if missing:
        message = "; ".join(missing)
        if os.environ.get(REQUIRE_UWSGI_ENV):
            pytest.fail(message)
        pytest.skip("{} (set {} to fail instead)".format(message, REQUIRE_UWSGI_ENV))


@pytest.fixture(scope="session")
def lab_templates(request, lab_templates_root):
    """
    The run's template homes, each made when a test first asks for it: a server
    with the plugin enabled and :data:`SERVER_RECORDS` records of activity, on
    SQLite or on PostgreSQL (in the :func:`postgres` cluster: the tests that ask
    for it are skipped when PostgreSQL is not installed), and a fresh client.
    Tests sync copies: ``lab_templates.new_server("sqlite", name, root=...,
    plugin=True, sync_options=...)`` and ``lab_templates.new_client(name,
    root=...)``.

    :rtype: sync_lab.harness.templates.Templates
    """
    with Templates(
        lab_templates_root,
        SERVER_RECORDS,
        plugin=True,
        postgres=lambda: request.getfixturevalue("postgres"),
    ) as templates:
        yield templates


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
def line_templates(lab_templates, lab_templates_root):
    """
    ``line_templates(line)``: the run's template homes made by Kolibri ``line``, as
    :func:`lab_templates` makes them (SQLite only); the running line's are
    :func:`lab_templates` itself. A line that is not installed skips the test (see
    :func:`python_of_line`).
    """
    made = {}
    with contextlib.ExitStack() as stack:

        def templates(line):
            python = python_of_line(line)
            if python == sys.executable:
                return lab_templates
            if line not in made:
                made[line] = stack.enter_context(
                    Templates(
                        lab_templates_root,
                        SERVER_RECORDS,
                        plugin=True,
                        python=python,
                        label="-" + line,
                    )
                )
            return made[line]

        yield templates
