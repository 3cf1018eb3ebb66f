"""
Four stock clients sync with one server at the same time, on SQLite and on
PostgreSQL: each pulls the facility, records activity of its own, and pushes it,
all four at once, through a timing proxy.

Every sync completes, no busy-database error reaches a client, the server ends up
with every client's records exactly once, and no request to the server takes
long: the stages run in jobs on Kolibri's workers while the clients poll.
"""

import contextlib
from types import SimpleNamespace

import pytest

from sync_lab.harness.checks import expected_server_counts
from sync_lab.harness.checks import sync_states
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.jobs import wait_for_stage_jobs
from sync_lab.harness.proxy import TimingProxy
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.scenario import all_at_once

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PULL_STAGES
from ..helpers.constants import PUSH_STAGES

pytestmark = pytest.mark.e2e

CLIENTS = 4
CLIENT_RECORDS = 120
#: The longest any single request may take: with the stages in jobs, a request
#: only records what the client asks for, or hands over a chunk of records.
LONGEST_REQUEST_BOUND_SECONDS = 10


#: What would tell a client that the server's database got in the way.
BUSY_DATABASE_ERRORS = (
    "database is locked",
    "could not serialize access",
    "deadlock detected",
    "duplicate key value",
)

BACKENDS = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def many_clients(request, tmp_path_factory, lab_templates, lab_report):
    backend = request.param
    root = tmp_path_factory.mktemp("many-clients-" + backend)
    server, facility = lab_templates.new_server(
        backend,
        "many-server-" + backend,
        root=root,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    clients = [
        lab_templates.new_client("client-{}".format(number), root=root)
        for number in range(CLIENTS)
    ]
    outcome = SimpleNamespace(backend=backend, server=server)
    with contextlib.ExitStack() as stack:
        for instance in [server] + clients:
            stack.enter_context(instance)
        server.start()
        proxy = stack.enter_context(TimingProxy(server.base_url))
        sync_args = (
            proxy.url,
            facility["id"],
            DEFAULT_CREDENTIALS.username,
            DEFAULT_CREDENTIALS.password,
        )

        outcome.pulls = all_at_once(
            lambda client: client.sync(
                *sync_args, push=False, timeout=600, check=False
            ),
            clients,
        )
        outcome.created = all_at_once(
            lambda numbered: numbered[1].call(
                generate_activity,
                records=CLIENT_RECORDS,
                facility_id=facility["id"],
                prefix="client{}".format(numbered[0]),
                seed=10 + numbered[0],
                existing_share=0.5,
            ),
            enumerate(clients),
        )
        outcome.longest_pull_request = proxy.longest()
        proxy.clear()
        outcome.pushes = all_at_once(
            lambda client: client.sync(
                *sync_args, pull=False, timeout=600, check=False
            ),
            clients,
        )
        outcome.longest_push_request = proxy.longest()

        # the clients do not wait for the server's cleanup jobs
        wait_for_stage_jobs(server, PUSH_STAGES)
        outcome.server_state, outcome.client_states = sync_states(
            server, clients, facility["id"]
        )
        outcome.server_log = server.log_tail()
        with open(server.log_path, errors="replace") as log:
            outcome.stage_retries = log.read().count("trying again (attempt")

    for phase in ("pull", "push"):
        longest = getattr(outcome, "longest_{}_request".format(phase))
        lab_report(
            "longest request, {} clients {}ing at once, {}".format(
                CLIENTS, phase, BACKENDS[backend]
            ),
            "{:.2f} s ({} {}, stage {})".format(
                longest.duration,
                longest.method,
                longest.path.split("?")[0],
                longest.stage or longest.requested_stage,
            ),
        )
    lab_report(
        "stage attempts repeated after a busy database, {}".format(BACKENDS[backend]),
        outcome.stage_retries,
    )
    return outcome


def _syncs(outcome):
    return outcome.pulls + outcome.pushes


def test_many_clients__every_pull_completes(many_clients):
    failed = [pull.tail() for pull in many_clients.pulls if not pull.ok]
    assert not failed, "\n\n".join(failed + [many_clients.server_log])


def test_many_clients__every_push_completes(many_clients):
    failed = [push.tail() for push in many_clients.pushes if not push.ok]
    assert not failed, "\n\n".join(failed + [many_clients.server_log])


def test_many_clients__no_busy_database_reaches_a_client(many_clients):
    seen = [
        error
        for sync in _syncs(many_clients)
        for error in BUSY_DATABASE_ERRORS
        if error in sync.output
    ]
    assert not seen


@pytest.mark.parametrize("kind", COUNTED)
def test_many_clients__server_holds_every_clients_records(many_clients, kind):
    """Each client holds the facility and its own records; the server, all of them."""
    server = many_clients.server_state["counts"][kind]
    expected = expected_server_counts(
        kind, many_clients.client_states, many_clients.created
    )
    assert expected == [server] * CLIENTS


def test_many_clients__no_row_twice_on_server(many_clients):
    assert set(many_clients.server_state["duplicates"].values()) == {0}


def test_many_clients__every_stage_job_completed(many_clients):
    jobs = many_clients.server_state["jobs"]
    assert len(jobs) == CLIENTS * len(PULL_STAGES | PUSH_STAGES)
    assert {job["job_state"] for job in jobs} == {"COMPLETED"}, jobs


def test_many_clients__no_transfer_session_open_on_server(many_clients):
    assert many_clients.server_state["open_transfer_sessions"] == []


def test_many_clients__no_request_takes_long(many_clients):
    longest = max(
        many_clients.longest_pull_request,
        many_clients.longest_push_request,
        key=lambda exchange: exchange.duration,
    )
    assert longest.duration < LONGEST_REQUEST_BOUND_SECONDS, longest
