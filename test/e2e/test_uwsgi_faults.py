"""
Faults on a server run as Debian's kolibri-server runs Kolibri: nginx in front of
uwsgi's 4 processes serving Kolibri's WSGI application, and the job workers in
``kolibri services`` beside them (:mod:`sync_lab.harness.uwsgi_server`). Every
background stage is on and none runs in the request (``INLINE_STAGE_RECORDS =
0``), so each server stage of a sync is reserved by a request in one of uwsgi's
processes and run by ``kolibri services``.

- **A uwsgi process killed mid-request.** While a stock client pushes over a
  thousand records, the uwsgi process serving a stage request (the push's first,
  ``dequeuing``, unless that one got away) is SIGKILLed after the request
  reserved the stage's job (a PENDING row) and before it queued it
  (:class:`~sync_lab.harness.faults.ReservationKiller`). The client's sync ends,
  completed or failed, without hanging; uwsgi's master starts another process;
  the client's next sync completes; afterwards both sides hold the same records,
  none twice, nothing is left undeserialized, job storage holds no stage job
  still PENDING, and no transfer session is left open: the next sync's count of
  the caps errored the killed request's stage, and its end closed that session.
- **The job worker killed mid-stage.** ``kolibri services`` is SIGKILLed while it
  deserializes a push: the client's poll marks the job failed (``WorkerGone``)
  and the client's sync stops with an error within a bound; with the worker
  started again, the client's retry completes and the data checks pass.
- **The job worker stopped.** A server whose ``kolibri services`` is not running,
  with the shortest ``STAGE_JOB_START_TIMEOUT`` allowed: the client's sync stops
  with an error soon after it, the server logs that no worker picked the job up,
  and the job is cancelled.

The first runs on SQLite and on PostgreSQL, whose reservations take a lock of
the database's own. The second and third run on SQLite only: neither depends on
the database, and a worker killed mid-stage on PostgreSQL, where the client's
poll learns it from the run's claim, is ``test_worker_hosts.py``'s. The first
two share one server and client, one after the other; the third has a server of
its own.

Skipped when uwsgi or nginx is missing, unless ``SYNC_LAB_REQUIRE_UWSGI`` is set;
the PostgreSQL runs are skipped without PostgreSQL, unless
``SYNC_LAB_REQUIRE_POSTGRES`` is set.
"""

import re
import time
from types import SimpleNamespace

import pytest
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.options import option_spec
from sync_lab.harness.checks import open_transfer_sessions
from sync_lab.harness.checks import sync_states
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.faults import ReservationKiller
from sync_lab.harness.jobs import list_pending_stage_jobs
from sync_lab.harness.jobs import list_stage_jobs
from sync_lab.harness.jobs import wait_for_stage_job
from sync_lab.harness.jobs import wait_for_stage_jobs
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.uwsgi_server import UWSGI_PROCESSES
from sync_lab.harness.uwsgi_server import UwsgiKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PUSH_STAGES
from ..helpers.round_trips import assert_job_failed_as_worker_gone
from ..helpers.round_trips import assert_no_row_twice
from ..helpers.round_trips import assert_stopped_at_failed_stage
from ..helpers.round_trips import failed_sync_message

pytestmark = pytest.mark.e2e

DATABASES = ["sqlite", "postgresql"]
#: Records the client pushes while a uwsgi process is killed: several chunks of
#: Kolibri's 200, so the push takes some seconds and a few dozen requests.
KILLED_REQUEST_RECORDS = 1200
#: Enough records that deserializing them takes seconds: time to kill the worker.
KILLED_WORKER_RECORDS = 1000
#: How soon the client must stop after the job worker died: one poll interval
#: (morango backs off to 5 s at most) and the poll, with room for a busy machine.
DETECTION_BOUND_SECONDS = 20
#: How soon a client whose request's process was killed must have ended its sync:
#: nginx answers 502 at once, or, if the request had answered, the client's poll
#: queues the stage's job and the sync goes on to its end.
KILLED_REQUEST_BOUND_SECONDS = 60
#: The shortest ``STAGE_JOB_START_TIMEOUT`` the plugin accepts.
MIN_STAGE_JOB_START_TIMEOUT = option_spec["Sync"]["STAGE_JOB_START_TIMEOUT"]["range"][0]
#: Room past the start timeout for starting the client's command, the sync's first
#: requests and morango's polling backoff, on a busy machine.
START_TIMEOUT_SLACK_SECONDS = 60
#: What uwsgi's master logs when one of its workers dies, and when it has started
#: another in its place.
UWSGI_WORKER_DIED = r"DAMN ! worker (\d+) \(pid: {pid}\) died, killed by signal 9"
UWSGI_WORKER_RESPAWNED = re.compile(r"Respawned uWSGI worker (\d+) \(new pid: (\d+)\)")


def _whole_log(server):
    with open(server.log_path, errors="replace") as log:
        return log.read()


def _failed_sync(sync, log):
    return failed_sync_message(sync, log[-6000:])


def _wait_for_new_uwsgi_worker(server, killed, timeout=30):
    """uwsgi's workers, once the master has replaced the ``killed`` one."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.uwsgi_worker_pids
        if (
            len(workers) == server.processes and killed not in workers
        ) or time.monotonic() > deadline:
            return workers
        time.sleep(0.1)


def _pending(jobs):
    return [job for job in jobs if job["job_state"] == "PENDING"]


@pytest.fixture(scope="module", params=DATABASES)
def deployment(request, uwsgi_and_nginx, tmp_path_factory, lab_templates):
    """
    A server as kolibri-server runs it, on the database of the run, and a client
    that has pulled its facility.
    """
    database = request.param
    root = tmp_path_factory.mktemp("uwsgi-faults-{}".format(database))
    server, facility = lab_templates.new_server(
        database,
        "uwsgi-faults-server",
        root=root,
        instance_class=UwsgiKolibriInstance,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    client = lab_templates.new_client("uwsgi-faults-client", root=root)
    with server, client:
        server.start()
        sync_args = (
            server.base_url,
            facility["id"],
            DEFAULT_CREDENTIALS.username,
            DEFAULT_CREDENTIALS.password,
        )
        pull = client.sync(*sync_args, push=False, timeout=600, check=False)
        assert pull.ok, _failed_sync(pull, _whole_log(server))
        yield SimpleNamespace(
            database=database,
            server=server,
            client=client,
            facility=facility,
            sync_args=sync_args,
        )


# -- a uwsgi process killed in the middle of a stage request ----------------------


@pytest.fixture(scope="module")
def uwsgi_killed(deployment, lab_report):
    """
    A push of many new records during which the uwsgi process serving a stage
    request is killed between reserving the stage's job and queueing it; then the
    client's next push.
    """
    server, client = deployment.server, deployment.client
    outcome = SimpleNamespace(database=deployment.database)
    client.call(
        generate_activity,
        records=KILLED_REQUEST_RECORDS,
        facility_id=deployment.facility["id"],
        prefix="uwsgikilled",
        seed=5,
        existing_share=0.5,
    )
    outcome.workers_before = server.uwsgi_worker_pids
    requests_before = len(server.access_log())
    killer = ReservationKiller(server, outcome.workers_before, wait=600)
    killer.start_watching()
    push = BackgroundSync(client, *deployment.sync_args, pull=False, timeout=600)
    push.start()
    try:
        outcome.push = push.wait(timeout=600)
    finally:
        killer.stop_watching()
    caught = killer.wait(timeout=120)
    outcome.killed, outcome.missed = caught["killed"], caught["missed"]
    outcome.client_ended_after = None
    if outcome.killed:
        outcome.client_ended_after = push.ended - outcome.killed["at"]
        outcome.workers_after_kill = _wait_for_new_uwsgi_worker(
            server, outcome.killed["pid"]
        )
    outcome.requests = server.access_log()[requests_before:]
    outcome.failed_requests = [e for e in outcome.requests if e.status >= 500]
    outcome.pending_after_kill = list_pending_stage_jobs(server)

    outcome.retry = client.sync(
        *deployment.sync_args, pull=False, timeout=600, check=False
    )
    # the client does not wait for the server's cleanup job
    wait_for_stage_jobs(server, PUSH_STAGES)
    outcome.server, [outcome.client] = sync_states(
        server, [client], deployment.facility["id"]
    )
    outcome.uwsgi_log = server.uwsgi_log_path.read_text(errors="replace")
    outcome.server_log = _whole_log(server)
    if outcome.killed:
        left_open = [
            "{stage}/{status}".format(**session)
            for session in outcome.server["open_transfer_sessions"]
        ]
        lab_report(
            "uwsgi process killed mid-request ({} stage, {}): client's sync "
            "ended after".format(outcome.killed["stage"], deployment.database),
            "{:.1f} s (exit {}; reservations queued before their process was "
            "held: {}; the killed request: {}; left open on the server after the "
            "next sync: {})".format(
                outcome.client_ended_after,
                outcome.push.returncode,
                len(outcome.missed),
                ", ".join(
                    "{} {}".format(e.method, e.status) for e in outcome.failed_requests
                )
                or "answered",
                ", ".join(left_open) or "nothing",
            ),
        )
    return outcome


def test_uwsgi_killed__a_uwsgi_process_was_killed_serving_a_stage_request(
    uwsgi_killed,
):
    """The killed process held a stage job it had reserved and not yet queued."""
    killed = uwsgi_killed.killed
    assert killed is not None, "no reservation caught; missed: {}".format(
        uwsgi_killed.missed
    )
    assert killed["pid"] in uwsgi_killed.workers_before
    assert killed["stage"] in {stage for _, stage in PUSH_STAGES}


def test_uwsgi_killed__uwsgi_logged_the_death_and_started_another(uwsgi_killed):
    killed = uwsgi_killed.killed
    assert killed is not None
    died = re.search(
        UWSGI_WORKER_DIED.format(pid=killed["pid"]), uwsgi_killed.uwsgi_log
    )
    assert died, uwsgi_killed.uwsgi_log[-3000:]
    respawned = [
        int(new_pid)
        for number, new_pid in UWSGI_WORKER_RESPAWNED.findall(
            uwsgi_killed.uwsgi_log[died.end() :]
        )
        if number == died.group(1)
    ]
    assert respawned, uwsgi_killed.uwsgi_log[-3000:]
    assert respawned[0] in uwsgi_killed.workers_after_kill
    assert killed["pid"] not in uwsgi_killed.workers_after_kill
    assert len(uwsgi_killed.workers_after_kill) == UWSGI_PROCESSES


def test_uwsgi_killed__client_sync_ended_without_hanging(uwsgi_killed):
    """
    The push either completed (the killed request had answered, and the client's
    poll queued the stage's job) or failed visibly (nginx answered 502 for the
    killed request, and the client stopped with an error).
    """
    push = uwsgi_killed.push
    assert uwsgi_killed.client_ended_after is not None
    assert uwsgi_killed.client_ended_after < KILLED_REQUEST_BOUND_SECONDS
    if not push.ok:
        assert push.returncode not in (0, None), push.tail()
        assert "Error" in push.output, push.tail()


def test_uwsgi_killed__no_request_but_the_killed_one_failed(uwsgi_killed):
    failed = uwsgi_killed.failed_requests
    assert len(failed) <= 1, failed
    assert all(e.status == 502 for e in failed), failed
    assert all(
        e.path.startswith("/api/morango/v1/transfersessions/") for e in failed
    ), failed


def test_uwsgi_killed__an_unanswered_request_left_its_job_pending(uwsgi_killed):
    """
    Until a request of the next sync counts the caps, the job of a request killed
    before it answered stays reserved by the dead process (a client that got its
    answer would have had it queued by its poll).
    """
    killed = uwsgi_killed.killed
    assert killed is not None
    pending = [
        (job["job_id"], (job["reserved_by"] or {}).get("pid"))
        for job in uwsgi_killed.pending_after_kill
    ]
    if uwsgi_killed.failed_requests:
        assert pending == [(killed["job_id"], killed["pid"])]
    else:
        assert pending == []


def test_uwsgi_killed__next_sync_completes(uwsgi_killed):
    assert uwsgi_killed.retry.ok, _failed_sync(
        uwsgi_killed.retry, uwsgi_killed.server_log
    )


@pytest.mark.parametrize("kind", COUNTED)
def test_uwsgi_killed__after_the_next_sync_counts_equal_on_both_sides(
    uwsgi_killed, kind
):
    server, client = uwsgi_killed.server["counts"], uwsgi_killed.client["counts"]
    assert server[kind] == client[kind], (server, client)


def test_uwsgi_killed__after_the_next_sync_no_row_twice(uwsgi_killed):
    assert_no_row_twice(uwsgi_killed.server, uwsgi_killed.client)


def test_uwsgi_killed__after_the_next_sync_nothing_left_to_deserialize(uwsgi_killed):
    assert uwsgi_killed.server["undeserialized"] == 0
    assert uwsgi_killed.client["undeserialized"] == 0


def test_uwsgi_killed__after_the_next_sync_no_stage_job_left_pending(uwsgi_killed):
    assert _pending(uwsgi_killed.server["jobs"]) == [], uwsgi_killed.server["jobs"]


def test_uwsgi_killed__after_the_next_sync_no_transfer_session_open_on_server(
    uwsgi_killed,
):
    assert uwsgi_killed.server["open_transfer_sessions"] == []


# -- the job worker killed while it deserializes a push ---------------------------


@pytest.fixture(scope="module")
def worker_killed(deployment, lab_report):
    """
    A push of many new records, with ``kolibri services`` SIGKILLed while it
    deserializes them; then the worker started again and the client's retry.
    """
    if deployment.database != "sqlite":
        pytest.skip(
            "on PostgreSQL, a worker killed mid-stage is test_worker_hosts.py's"
        )
    server, client = deployment.server, deployment.client
    killed = SimpleNamespace(database=deployment.database)
    client.call(
        generate_activity,
        records=KILLED_WORKER_RECORDS,
        facility_id=deployment.facility["id"],
        prefix="workerkilled",
        seed=6,
        existing_share=0.5,
    )
    # what an earlier fault left open is not this one's to close
    killed.open_before = {
        session["id"] for session in server.call(open_transfer_sessions)
    }
    push = BackgroundSync(client, *deployment.sync_args, pull=False, timeout=600)
    push.start()
    killed.job = wait_for_stage_job(
        server, transfer_stages.DESERIALIZING, "push", timeout=300
    )
    killed.pid = server.kill_worker()
    killed_at = time.monotonic()
    killed.push = push.wait(timeout=600)
    killed.detected_after = push.ended - killed_at
    lab_report(
        "kolibri services killed during deserializing behind uwsgi ({}): client "
        "stopped after".format(deployment.database),
        "{:.1f} s (exit {})".format(killed.detected_after, killed.push.returncode),
    )

    server.start_worker()
    killed.retry = client.sync(
        *deployment.sync_args, pull=False, timeout=600, check=False
    )
    wait_for_stage_jobs(server, PUSH_STAGES)
    killed.server, [killed.client] = sync_states(
        server, [client], deployment.facility["id"]
    )
    killed.server_log = _whole_log(server)
    return killed


def test_worker_killed__while_running_the_deserializing_job(worker_killed):
    assert worker_killed.job["worker_process"] == str(worker_killed.pid)


def test_worker_killed__client_sync_stops_with_an_error(worker_killed):
    assert_stopped_at_failed_stage(worker_killed.push, transfer_stages.DESERIALIZING)


def test_worker_killed__client_stops_within_the_bound(worker_killed):
    assert worker_killed.detected_after < DETECTION_BOUND_SECONDS


def test_worker_killed__job_failed_as_worker_gone(worker_killed):
    assert_job_failed_as_worker_gone(worker_killed.server, worker_killed.job["job_id"])


def test_worker_killed__retry_completes(worker_killed):
    assert worker_killed.retry.ok, _failed_sync(
        worker_killed.retry, worker_killed.server_log
    )


@pytest.mark.parametrize("kind", COUNTED)
def test_worker_killed__after_the_retry_counts_equal_on_both_sides(worker_killed, kind):
    server, client = worker_killed.server["counts"], worker_killed.client["counts"]
    assert server[kind] == client[kind], (server, client)


def test_worker_killed__after_the_retry_no_row_twice(worker_killed):
    assert_no_row_twice(worker_killed.server, worker_killed.client)


def test_worker_killed__after_the_retry_nothing_left_to_deserialize(worker_killed):
    assert worker_killed.server["undeserialized"] == 0
    assert worker_killed.client["undeserialized"] == 0


def test_worker_killed__after_the_retry_no_stage_job_left_pending(worker_killed):
    assert _pending(worker_killed.server["jobs"]) == [], worker_killed.server["jobs"]


def test_worker_killed__after_the_retry_no_transfer_session_left_open_on_server(
    worker_killed,
):
    opened = [
        session
        for session in worker_killed.server["open_transfer_sessions"]
        if session["id"] not in worker_killed.open_before
    ]
    assert opened == []


# -- the job worker stopped --------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite"])
def worker_stopped(
    request, uwsgi_and_nginx, tmp_path_factory, lab_templates, lab_report
):
    """
    A fresh client's sync with a uwsgi server whose ``kolibri services`` was
    stopped, and whose stage jobs may wait the shortest time allowed for a worker.
    """
    database = request.param
    root = tmp_path_factory.mktemp("uwsgi-worker-stopped-{}".format(database))
    server, facility = lab_templates.new_server(
        database,
        "uwsgi-workerless-server",
        root=root,
        instance_class=UwsgiKolibriInstance,
        plugin=True,
        sync_options=dict(
            BACKGROUND_EVERYTHING,
            STAGE_JOB_START_TIMEOUT=MIN_STAGE_JOB_START_TIMEOUT,
        ),
    )
    client = lab_templates.new_client("uwsgi-workerless-client", root=root)
    outcome = SimpleNamespace()
    with server, client:
        server.start()
        server.stop_worker()
        outcome.pids = server.pids()
        started = time.monotonic()
        outcome.sync = client.sync(
            server.base_url,
            facility["id"],
            DEFAULT_CREDENTIALS.username,
            DEFAULT_CREDENTIALS.password,
            timeout=600,
            check=False,
        )
        outcome.took = time.monotonic() - started
        outcome.jobs = list_stage_jobs(server)
        outcome.server_log = _whole_log(server)
        outcome.access_log = server.access_log()
    lab_report(
        "no kolibri services behind uwsgi ({}), STAGE_JOB_START_TIMEOUT = {} s: "
        "client stopped after".format(database, MIN_STAGE_JOB_START_TIMEOUT),
        "{:.1f} s (exit {})".format(outcome.took, outcome.sync.returncode),
    )
    return outcome


def test_worker_stopped__only_uwsgi_and_nginx_ran(worker_stopped):
    assert worker_stopped.pids["services"] == []
    assert len(worker_stopped.pids["uwsgi worker"]) == UWSGI_PROCESSES


def test_worker_stopped__client_sync_fails(worker_stopped):
    assert not worker_stopped.sync.ok, worker_stopped.sync.tail()
    assert worker_stopped.sync.returncode is not None


def test_worker_stopped__client_stops_within_the_start_timeout(worker_stopped):
    assert worker_stopped.took < (
        MIN_STAGE_JOB_START_TIMEOUT + START_TIMEOUT_SLACK_SECONDS
    ), worker_stopped.sync.tail()


def test_worker_stopped__server_log_says_no_worker_picked_the_job_up(worker_stopped):
    assert "no background worker picked it up" in worker_stopped.server_log


def test_worker_stopped__the_unstarted_stage_job_is_cancelled(worker_stopped):
    assert [job["job_state"] for job in worker_stopped.jobs] == ["CANCELED"], (
        worker_stopped.jobs
    )


def test_worker_stopped__every_request_was_answered(worker_stopped):
    assert not [e for e in worker_stopped.access_log if e.status >= 500]
