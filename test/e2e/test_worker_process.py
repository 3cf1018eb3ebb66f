"""
A server whose job workers run in their own process, as a production deployment
splits Kolibri: an HTTP process without workers, and ``kolibri services`` sharing
its home. The background stages run in the worker process; when that process is
killed in the middle of a stage, the client's sync stops with an error within a
bounded time, and once the worker is back a retry leaves both sides equal.

The module's tests share one server and one client: first a clean round trip,
then a push during which the worker is killed, then the retry.
"""

import time
from types import SimpleNamespace

import pytest
from morango.constants import transfer_stages

from sync_lab.harness.checks import sync_states
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.jobs import list_stage_jobs
from sync_lab.harness.jobs import wait_for_stage_job
from sync_lab.harness.jobs import wait_for_stage_jobs
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.scenario import round_trip
from sync_lab.harness.split import SplitKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PULL_STAGES
from ..helpers.constants import PUSH_STAGES

pytestmark = pytest.mark.e2e

CLIENT_RECORDS = 120
#: Enough records that deserializing them takes seconds: time to kill the worker.
KILLED_PUSH_RECORDS = 800
#: How soon the client must stop after the worker died: one poll interval (morango
#: backs off to 5 s at most) and the poll, with room for a busy machine.
DETECTION_BOUND_SECONDS = 20


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    return tmp_path_factory.mktemp("worker-process")


@pytest.fixture(scope="module")
def deployment(lab_root, lab_templates):
    """The split server, running, its worker process, and a fresh client."""
    server, facility = lab_templates.new_server(
        "sqlite",
        "split-server",
        root=lab_root,
        instance_class=SplitKolibriInstance,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    client = lab_templates.new_client("split-client", root=lab_root)
    with server, client:
        server.start()
        server.start_worker()
        yield server, client, facility


@pytest.fixture(scope="module")
def synced(deployment):
    """A round trip with every stage it can run in a job in the worker process."""
    server, client, facility = deployment
    outcome = round_trip(
        server,
        client,
        facility,
        CLIENT_RECORDS,
        expected_jobs=PULL_STAGES | PUSH_STAGES,
    )
    outcome.worker_pid = server.worker_pid
    outcome.job_rows = list_stage_jobs(server)
    outcome.server = server
    return outcome


@pytest.fixture(scope="module")
def worker_killed(synced, deployment, lab_report):
    """
    A push of many new records, with the worker process SIGKILLed while it
    deserializes them; then the worker started again and the client's retry.
    """
    server, client, facility = deployment
    killed = SimpleNamespace()
    client.call(
        generate_activity,
        records=KILLED_PUSH_RECORDS,
        facility_id=facility["id"],
        prefix="killed",
        seed=2,
        existing_share=0.5,
    )
    sync_args = (
        server.base_url,
        facility["id"],
        DEFAULT_CREDENTIALS.username,
        DEFAULT_CREDENTIALS.password,
    )
    push = BackgroundSync(client, *sync_args, pull=False, timeout=600)
    push.start()
    killed.job = wait_for_stage_job(
        server, transfer_stages.DESERIALIZING, "push", timeout=300
    )
    killed.pid = server.kill_worker()
    killed_at = time.monotonic()
    killed.push = push.wait(timeout=600)
    killed.detected_after = push.ended - killed_at
    lab_report(
        "worker killed during deserializing: client stopped after",
        "{:.1f} s (exit {})".format(killed.detected_after, killed.push.returncode),
    )

    server.start_worker()
    killed.retry = client.sync(*sync_args, timeout=600, check=False)
    # the client does not wait for the server's cleanup job
    wait_for_stage_jobs(server, PUSH_STAGES)
    killed.server, [killed.client] = sync_states(server, [client], facility["id"])
    killed.server_log = server.log_tail()
    return killed


def _failed_sync(sync, server):
    return "client:\n{}\n\nserver log:\n{}".format(sync.tail(), server.log_tail())


# -- the round trip, with the stages in the worker process ----------------------


def test_separate_worker__pull_completes(synced):
    assert synced.pull.ok, _failed_sync(synced.pull, synced.server)


def test_separate_worker__push_completes(synced):
    assert synced.push is not None, "the pull failed, so nothing was pushed"
    assert synced.push.ok, _failed_sync(synced.push, synced.server)


def test_separate_worker__each_configured_stage_completed_in_a_job(synced):
    completed = {
        (job["direction"], job["stage"])
        for job in synced.jobs
        if job["job_state"] == "COMPLETED"
    }
    assert completed == PULL_STAGES | PUSH_STAGES, synced.jobs


def test_separate_worker__every_job_ran_in_the_worker_process(synced):
    ran_in = {job["worker_process"] for job in synced.job_rows}
    assert ran_in == {str(synced.worker_pid)}, synced.job_rows


@pytest.mark.parametrize("kind", COUNTED)
def test_separate_worker__counts_equal_on_both_sides(synced, kind):
    assert synced.counts, "the round trip ended before counting"
    assert synced.counts["server"][kind] == synced.counts["client"][kind], synced.counts


# -- the worker killed while it deserializes a push -----------------------------


def test_worker_killed__while_running_the_deserializing_job(worker_killed):
    assert worker_killed.job["worker_process"] == str(worker_killed.pid)


def test_worker_killed__client_sync_stops_with_an_error(worker_killed):
    assert worker_killed.push.returncode not in (0, None), worker_killed.push.tail()
    assert "Stage `deserializing` failed" in worker_killed.push.output


def test_worker_killed__client_stops_within_the_bound(worker_killed):
    assert worker_killed.detected_after < DETECTION_BOUND_SECONDS


def test_worker_killed__job_failed_as_worker_gone(worker_killed):
    [job] = [
        job
        for job in worker_killed.server["jobs"]
        if job["job_id"] == worker_killed.job["job_id"]
    ]
    assert job["job_state"] == "FAILED"
    assert "WorkerGone" in (job["detail"] or ""), job


def test_worker_killed__retry_completes(worker_killed):
    assert worker_killed.retry.ok, "client:\n{}\n\nserver log:\n{}".format(
        worker_killed.retry.tail(), worker_killed.server_log
    )


@pytest.mark.parametrize("kind", COUNTED)
def test_worker_killed__after_the_retry_counts_equal_on_both_sides(worker_killed, kind):
    server, client = worker_killed.server["counts"], worker_killed.client["counts"]
    assert server[kind] == client[kind], (server, client)


def test_worker_killed__after_the_retry_no_row_twice(worker_killed):
    assert set(worker_killed.server["duplicates"].values()) == {0}
    assert set(worker_killed.client["duplicates"].values()) == {0}


def test_worker_killed__after_the_retry_nothing_left_to_deserialize(worker_killed):
    assert worker_killed.server["undeserialized"] == 0


def test_worker_killed__after_the_retry_no_transfer_session_open_on_server(
    worker_killed,
):
    assert worker_killed.server["open_transfer_sessions"] == []
