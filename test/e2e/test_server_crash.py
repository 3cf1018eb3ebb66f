"""
The whole server killed while it deserializes a push in a background job, after
some of its pieces have committed (on a morango the pieces follow), and started
again. The server runs ``kolibri start`` (HTTP and job workers in one
process) and the client syncs through a proxy, as it would behind nginx, which
answers 502 while the server is down.

The client's sync either completes or stops with an error soon after the crash;
the job Kolibri requeues when its workers start finishes the stage; the client's
retry completes, and both sides hold the same records, none twice, with nothing
left open on the server.
"""

import time
from types import SimpleNamespace

import pytest
from morango.constants import transfer_stages

from kolibri_sync_extras_plugin.piecewise.support import supports_installed_morango
from sync_lab.harness.checks import sync_states
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.faults import kill_server
from sync_lab.harness.jobs import list_stage_jobs
from sync_lab.harness.jobs import wait_for_stage_job
from sync_lab.harness.jobs import wait_for_stage_jobs
from sync_lab.harness.proxy import TimingProxy
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PUSH_STAGES

pytestmark = pytest.mark.e2e

#: Enough records that deserializing them takes seconds: time to kill the server.
CRASHED_PUSH_RECORDS = 800
#: How soon after the crash the client's sync must have ended, one way or the
#: other: the server's restart, a poll interval and the poll, with room to spare.
ENDED_BOUND_SECONDS = 60


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, lab_templates, lab_report):
    """
    A client pulls through the proxy, records activity, and pushes it; the server
    is SIGKILLed while its deserializing job runs (once a piece has committed, where
    it deserializes in pieces), and started again at once. Then the client syncs
    again.
    """
    root = tmp_path_factory.mktemp("server-crash")
    server, facility = lab_templates.new_server(
        "sqlite",
        "crash-server",
        root=root,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    client = lab_templates.new_client("crash-client", root=root)
    outcome = SimpleNamespace(server=server)
    with server, client:
        server.start()
        with TimingProxy(server.base_url) as proxy:
            sync_args = (
                proxy.url,
                facility["id"],
                DEFAULT_CREDENTIALS.username,
                DEFAULT_CREDENTIALS.password,
            )
            pull = client.sync(*sync_args, push=False, timeout=600, check=False)
            assert pull.ok, pull.tail()
            client.call(
                generate_activity,
                records=CRASHED_PUSH_RECORDS,
                facility_id=facility["id"],
                prefix="crash",
                seed=3,
                existing_share=0.5,
            )

            push = BackgroundSync(client, *sync_args, pull=False, timeout=600)
            push.start()
            outcome.job = wait_for_stage_job(
                server,
                transfer_stages.DESERIALIZING,
                "push",
                timeout=300,
                min_progress=1 if supports_installed_morango() else 0,
            )
            outcome.killed_pid = kill_server(server)
            killed_at = time.monotonic()
            server.start()
            # the restarted server listens on a new port
            proxy.upstream_port = server.port
            outcome.push = push.wait(timeout=600)
            outcome.ended_after = push.ended - killed_at
            lab_report(
                "server killed during deserializing: client's push ended after",
                "{:.1f} s ({})".format(
                    outcome.ended_after,
                    "completed" if outcome.push.ok else "errored",
                ),
            )

            wait_for_stage_jobs(server, {("push", "deserializing")})
            outcome.job_rows = list_stage_jobs(server)
            outcome.retry = client.sync(*sync_args, timeout=600, check=False)
        # the client does not wait for the server's cleanup job
        wait_for_stage_jobs(server, PUSH_STAGES)
        outcome.server_state, [outcome.client_state] = sync_states(
            server, [client], facility["id"]
        )
        outcome.server_log = server.log_tail()
        yield outcome


def test_server_killed__while_running_the_deserializing_job(crashed):
    # kolibri start runs its job workers as threads of the server process
    assert crashed.job["worker_process"] == str(crashed.killed_pid)


@pytest.mark.skipif(
    not supports_installed_morango(),
    reason="the plugin deserializes in pieces only with morango 0.8.15",
)
def test_server_killed__between_pieces__some_committed_and_some_not(crashed):
    job = crashed.job
    assert 0 < job["progress"] < job["total_progress"], job


def test_server_killed__client_push_ended_within_the_bound(crashed):
    assert crashed.ended_after < ENDED_BOUND_SECONDS


def test_server_killed__client_push_completed_or_said_why_not(crashed):
    said_why = (
        "502 Server Error" in crashed.push.output
        and "Stage `deserializing` failed" in crashed.push.output
    )
    assert crashed.push.ok or said_why, crashed.push.tail()


def test_server_restarted__requeued_job_finished_the_stage(crashed):
    [job] = [row for row in crashed.job_rows if row["job_id"] == crashed.job["job_id"]]
    assert job["job_state"] == "COMPLETED", job
    assert job["worker_process"] != str(crashed.killed_pid), job


def test_retry__completes(crashed):
    assert crashed.retry.ok, "client:\n{}\n\nserver log:\n{}".format(
        crashed.retry.tail(), crashed.server_log
    )


@pytest.mark.parametrize("kind", COUNTED)
def test_retry__counts_equal_on_both_sides(crashed, kind):
    server, client = crashed.server_state["counts"], crashed.client_state["counts"]
    assert server[kind] == client[kind], (server, client)


def test_retry__no_row_twice(crashed):
    assert set(crashed.server_state["duplicates"].values()) == {0}
    assert set(crashed.client_state["duplicates"].values()) == {0}


def test_retry__nothing_left_to_deserialize_on_server(crashed):
    assert crashed.server_state["undeserialized"] == 0


def test_retry__only_the_interrupted_push_may_stay_open_on_server(crashed):
    # the requeued job completed its stage after its client had given up: it is
    # not errored, so it is not closed until it has been left alone for a while
    # (a client still at work on it would DELETE it next)
    left_open = crashed.server_state["open_transfer_sessions"]
    assert {ts["id"] for ts in left_open} <= {crashed.job["transfer_session_id"]}
    assert all(ts["status"] != "errored" for ts in left_open), left_open
