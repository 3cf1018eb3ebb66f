"""
A server run as Debian's kolibri-server runs Kolibri: nginx in front of uwsgi,
which serves Kolibri's WSGI application in 4 processes, and the job workers in
``kolibri services`` beside them (:mod:`sync_lab.harness.uwsgi_server`). With
every background stage on and none run in the request, stock clients sync through
nginx:

- one client's round trip, on SQLite: both syncs complete, the data checks pass on both
  sides, every stage ran in a job in the ``kolibri services`` process, and the
  plugin's request hooks ran in uwsgi's workers (the stage jobs are queued when
  a request finishes; each request's mark on the home's lock file is gone); then
  a uwsgi worker is killed, uwsgi starts another and nginx keeps answering;
- four clients at once, on SQLite and on PostgreSQL: every sync completes and the server holds every client's
  records exactly once.

Skipped when uwsgi or nginx is missing, unless ``SYNC_LAB_REQUIRE_UWSGI`` is set;
the PostgreSQL runs are skipped without PostgreSQL, unless
``SYNC_LAB_REQUIRE_POSTGRES`` is set. Faults on this topology (a uwsgi process or
the job worker killed, the job worker stopped) are in ``test_uwsgi_faults.py``.
"""

import contextlib
import fcntl
import os
import time
import urllib.request
from types import SimpleNamespace

import pytest

from kolibri_sync_extras_plugin.requests_in_flight import REQUESTS_LOCK_FILE_NAME
from sync_lab.harness.checks import expected_server_counts
from sync_lab.harness.checks import sync_states
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.jobs import wait_for_stage_jobs
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.scenario import all_at_once
from sync_lab.harness.scenario import round_trip
from sync_lab.harness.topology import peak_rss_line
from sync_lab.harness.uwsgi_server import UWSGI_PROCESSES
from sync_lab.harness.uwsgi_server import UwsgiKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PULL_STAGES
from ..helpers.constants import PUSH_STAGES
from ..helpers.round_trips import failed_sync_message

pytestmark = pytest.mark.e2e

#: The server's database in each run.
DATABASES = ["sqlite", "postgresql"]
CLIENT_RECORDS = 120
CLIENTS = 4
#: The longest any request may take through nginx: with the stages in jobs, a
#: request records what the client asks for or hands over a chunk of records.
LONGEST_REQUEST_BOUND_SECONDS = 10
#: What would tell a client that the server's database got in the way.
BUSY_DATABASE_ERRORS = (
    "database is locked",
    "could not serialize access",
    "deadlock detected",
    "duplicate key value",
)


def _new_server(lab_templates, database, root, name):
    return lab_templates.new_server(
        database,
        name,
        root=root,
        instance_class=UwsgiKolibriInstance,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )


def _all_pids(pids):
    return {pid for role_pids in pids.values() for pid in role_pids}


def _alive(pid):
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open("/proc/{}/stat".format(pid)) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _requests_lock_state(home):
    """
    Whether a request still holds its mark on the plugin's lock file: ``"free"``
    when none does, ``"held"`` when one does, ``"missing"`` when no request ever
    marked itself (the file is made by the first request's start).
    """
    path = os.path.join(str(home), REQUESTS_LOCK_FILE_NAME)
    if not os.path.exists(path):
        return "missing"
    with open(path, "a") as lock_file:
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
    return "free"


def _wait_for_new_worker(server, killed, timeout=30):
    """uwsgi's workers, once the master has replaced the ``killed`` one."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.uwsgi_worker_pids
        if (
            len(workers) == server.processes and killed not in workers
        ) or time.monotonic() > deadline:
            return workers
        time.sleep(0.1)


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status
    except Exception as e:  # the test reports what it got
        return repr(e)


@pytest.fixture(scope="module", params=DATABASES)
def database(request):
    """The server's database: ``sqlite`` or ``postgresql``."""
    return request.param


# -- one client, a round trip -----------------------------------------------------


@pytest.fixture(scope="module")
def single(uwsgi_and_nginx, tmp_path_factory, lab_templates, lab_report):
    database = "sqlite"
    root = tmp_path_factory.mktemp("uwsgi-single-{}".format(database))
    server, facility = _new_server(lab_templates, database, root, "uwsgi-server")
    client = lab_templates.new_client("uwsgi-client", root=root)
    outcome = SimpleNamespace(server=server, database=database)
    with server, client:
        server.start()
        outcome.pids_at_start = server.pids()
        outcome.round_trip = round_trip(
            server,
            client,
            facility,
            CLIENT_RECORDS,
            expected_jobs=PULL_STAGES | PUSH_STAGES,
        )
        outcome.pids_after_sync = server.pids()
        outcome.server_state, [outcome.client_state] = sync_states(
            server, [client], facility["id"]
        )
        outcome.requests_lock = _requests_lock_state(server.home)
        outcome.access_log = server.access_log()
        outcome.uwsgi_log = server.uwsgi_log_path.read_text(errors="replace")
        outcome.uwsgi_ini = server.uwsgi_ini_path.read_text()
        outcome.server_log = server.log_tail()
        outcome.peaks = server.process_peaks()

        # one of uwsgi's workers dies: its master starts another
        outcome.killed_worker = server.kill_uwsgi_worker()
        outcome.workers_after_kill = _wait_for_new_worker(server, outcome.killed_worker)
        outcome.answers_after_kill = [
            _status(server.base_url + "/api/public/info/")
            for _ in range(2 * UWSGI_PROCESSES)
        ]
        every_pid = _all_pids(server.pids()) | _all_pids(outcome.pids_at_start)
    outcome.left_running = sorted(
        pid for pid in every_pid - {outcome.killed_worker} if _alive(pid)
    )
    lab_report(
        "peak RSS, nginx -> uwsgi, one client, {}".format(database),
        peak_rss_line(outcome.peaks),
    )
    return outcome


def test_uwsgi__deployment_runs_each_process_of_kolibri_server(single):
    pids = single.pids_at_start
    assert len(pids["services"]) == 1
    assert len(pids["uwsgi master"]) == 1
    assert len(pids["uwsgi worker"]) == UWSGI_PROCESSES
    assert len(pids["nginx master"]) == 1
    assert pids["nginx worker"]
    assert len(_all_pids(pids)) == sum(len(role) for role in pids.values())


def test_uwsgi__runs_with_kolibri_servers_limits(single):
    assert "address space limit is 1073741824 bytes (1024 MB)" in single.uwsgi_log
    assert "Operational MODE: preforking" in single.uwsgi_log
    for setting in ("harakiri = 5000", "reload-on-rss = 512", "master = true"):
        assert setting in single.uwsgi_ini


def test_uwsgi__pull_completes(single):
    pull = single.round_trip.pull
    assert pull.ok, failed_sync_message(pull, single.server_log)


def test_uwsgi__push_completes(single):
    push = single.round_trip.push
    assert push is not None, "the pull failed, so nothing was pushed"
    assert push.ok, failed_sync_message(push, single.server_log)


def test_uwsgi__every_request_went_through_nginx_to_uwsgi(single):
    morango = [e for e in single.access_log if e.path.startswith("/api/morango/")]
    assert any("/transfersessions/" in e.path for e in morango), single.access_log
    assert all(e.upstream_time is not None for e in morango)
    assert not [e for e in single.access_log if e.status >= 500]


def test_uwsgi__each_configured_stage_completed_in_a_job(single):
    completed = {
        (job["direction"], job["stage"])
        for job in single.server_state["jobs"]
        if job["job_state"] == "COMPLETED"
    }
    assert completed == PULL_STAGES | PUSH_STAGES, single.server_state["jobs"]


def test_uwsgi__every_job_ran_in_the_services_process(single):
    ran_in = {job["worker_process"] for job in single.server_state["jobs"]}
    assert ran_in == {str(pid) for pid in single.pids_at_start["services"]}


def test_uwsgi__request_hooks_start_and_finish_in_uwsgis_workers(single):
    """
    Each request marks itself on the lock file when Django's ``request_started``
    fires and drops the mark on ``request_finished``: a mark left behind would
    be a request whose end uwsgi never signalled.
    """
    assert single.requests_lock == "free"


def test_uwsgi__no_worker_died_during_the_syncs(single):
    assert single.pids_after_sync == single.pids_at_start, single.uwsgi_log[-3000:]


@pytest.mark.parametrize("kind", COUNTED)
def test_uwsgi__counts_equal_on_both_sides(single, kind):
    counts = single.round_trip.counts
    assert counts, "the round trip ended before counting"
    assert counts["server"][kind] == counts["client"][kind], counts


def test_uwsgi__no_row_twice(single):
    assert set(single.server_state["duplicates"].values()) == {0}
    assert set(single.client_state["duplicates"].values()) == {0}


def test_uwsgi__nothing_left_to_deserialize_or_open(single):
    assert single.server_state["undeserialized"] == 0
    assert single.client_state["undeserialized"] == 0
    assert single.server_state["open_transfer_sessions"] == []


def test_uwsgi__a_killed_worker_is_replaced_and_nginx_still_answers(single):
    assert single.killed_worker not in single.workers_after_kill
    assert len(single.workers_after_kill) == UWSGI_PROCESSES
    assert single.answers_after_kill == [200] * (2 * UWSGI_PROCESSES)


def test_uwsgi__every_process_stopped_with_the_instance(single):
    assert single.left_running == []


# -- four clients at once ---------------------------------------------------------


@pytest.fixture(scope="module")
def four_clients(
    database, uwsgi_and_nginx, tmp_path_factory, lab_templates, lab_report
):
    root = tmp_path_factory.mktemp("uwsgi-four-clients-{}".format(database))
    server, facility = _new_server(lab_templates, database, root, "uwsgi-many-server")
    clients = [
        lab_templates.new_client("uwsgi-client-{}".format(number), root=root)
        for number in range(CLIENTS)
    ]
    outcome = SimpleNamespace(server=server)
    with contextlib.ExitStack() as stack:
        for instance in [server] + clients:
            stack.enter_context(instance)
        server.start()
        outcome.services_pid = server.services_pid
        sync_args = (
            server.base_url,
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
        outcome.pushes = all_at_once(
            lambda client: client.sync(
                *sync_args, pull=False, timeout=600, check=False
            ),
            clients,
        )
        # the clients do not wait for the server's cleanup jobs
        wait_for_stage_jobs(server, PUSH_STAGES)
        outcome.server_state, outcome.client_states = sync_states(
            server, clients, facility["id"]
        )
        outcome.access_log = server.access_log()
        outcome.server_log = server.log_tail()
        outcome.peaks = server.process_peaks()
    longest = max(outcome.access_log, key=lambda entry: entry.request_time)
    outcome.longest = longest
    lab_report(
        "longest request through nginx, {} clients at once, uwsgi, {}".format(
            CLIENTS, database
        ),
        "{:.2f} s ({} {})".format(
            longest.request_time, longest.method, longest.path.split("?")[0]
        ),
    )
    largest = max(outcome.access_log, key=lambda entry: entry.request_length or 0)
    lab_report(
        "largest request through nginx, {} clients at once, {} "
        "(client_max_body_size 1 MB)".format(CLIENTS, database),
        "{:.0f} KB ({} {})".format(
            (largest.request_length or 0) / 1024.0,
            largest.method,
            largest.path.split("?")[0],
        ),
    )
    lab_report(
        "peak RSS, nginx -> uwsgi, {} clients, {}".format(CLIENTS, database),
        peak_rss_line(outcome.peaks),
    )
    return outcome


def test_uwsgi_four_clients__every_pull_completes(four_clients):
    failed = [pull.tail() for pull in four_clients.pulls if not pull.ok]
    assert not failed, "\n\n".join(failed + [four_clients.server_log])


def test_uwsgi_four_clients__every_push_completes(four_clients):
    failed = [push.tail() for push in four_clients.pushes if not push.ok]
    assert not failed, "\n\n".join(failed + [four_clients.server_log])


def test_uwsgi_four_clients__no_busy_database_reaches_a_client(four_clients):
    seen = [
        error
        for sync in four_clients.pulls + four_clients.pushes
        for error in BUSY_DATABASE_ERRORS
        if error in sync.output
    ]
    assert not seen


@pytest.mark.parametrize("kind", COUNTED)
def test_uwsgi_four_clients__server_holds_every_clients_records(four_clients, kind):
    server = four_clients.server_state["counts"][kind]
    expected = expected_server_counts(
        kind, four_clients.client_states, four_clients.created
    )
    assert expected == [server] * CLIENTS


def test_uwsgi_four_clients__no_row_twice_on_server(four_clients):
    assert set(four_clients.server_state["duplicates"].values()) == {0}


def test_uwsgi_four_clients__every_stage_job_completed_in_the_services_process(
    four_clients,
):
    jobs = four_clients.server_state["jobs"]
    assert len(jobs) == CLIENTS * len(PULL_STAGES | PUSH_STAGES)
    assert {job["job_state"] for job in jobs} == {"COMPLETED"}, jobs
    assert {job["worker_process"] for job in jobs} == {str(four_clients.services_pid)}


def test_uwsgi_four_clients__nothing_left_to_deserialize_or_open(four_clients):
    assert four_clients.server_state["undeserialized"] == 0
    assert [state["undeserialized"] for state in four_clients.client_states] == [
        0
    ] * CLIENTS
    assert four_clients.server_state["open_transfer_sessions"] == []


def test_uwsgi_four_clients__no_request_takes_long_or_fails(four_clients):
    assert four_clients.longest.request_time < LONGEST_REQUEST_BOUND_SECONDS
    assert not [e for e in four_clients.access_log if e.status >= 500]
    # a chunk over nginx's client_max_body_size would be refused with 413
    assert not [e for e in four_clients.access_log if e.status == 413]
