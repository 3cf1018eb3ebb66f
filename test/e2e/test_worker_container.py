"""
A worker in a container of its own: ``kolibri services`` in a pid namespace of
its own, under the same host name and sharing the server's home, as in a
Kubernetes pod or Docker with host networking. Its pid means nothing to the HTTP
process, so a client's poll while it runs a stage must not call it dead.

On SQLite this run also passed with the old host-name-and-pid check, whose poll
had to write while the stage held SQLite's write lock; ``test_workers`` pins the
poll's decision itself, and fails with the old check.
"""

import os
import shutil
from types import SimpleNamespace

import pytest
import requests
from morango.constants import transfer_stages

from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.jobs import list_stage_jobs
from sync_lab.harness.jobs import wait_for_stage_job
from sync_lab.harness.proxy import TRANSFER_SESSIONS_PATH
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.split import SplitKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.worker_processes import free_pid

pytestmark = pytest.mark.e2e

#: Enough records that deserializing them takes seconds: time to poll meanwhile.
PUSHED_RECORDS = 800


@pytest.fixture(scope="module")
def pushed_while_polled(tmp_path_factory, lab_templates):
    """
    A push whose deserializing job runs in the namespaced worker, polled by hand
    while it runs; then the push's outcome and the jobs.
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a pid namespace needs root and unshare")
    root = tmp_path_factory.mktemp("worker-container")
    server, facility = lab_templates.new_server(
        "sqlite",
        "container-server",
        root=root,
        instance_class=SplitKolibriInstance,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    client = lab_templates.new_client("container-client", root=root)
    outcome = SimpleNamespace()
    with server, client:
        server.start()
        outcome.worker_pid = free_pid()
        server.start_worker(pid_namespace_pid=outcome.worker_pid)
        sync_args = (
            server.base_url,
            facility["id"],
            DEFAULT_CREDENTIALS.username,
            DEFAULT_CREDENTIALS.password,
        )
        outcome.pull = client.sync(*sync_args, push=False, timeout=900, check=False)
        assert outcome.pull.ok, outcome.pull.tail()
        client.call(
            generate_activity,
            records=PUSHED_RECORDS,
            facility_id=facility["id"],
            prefix="container",
            seed=3,
            existing_share=0.5,
        )
        push = BackgroundSync(client, *sync_args, pull=False, timeout=600)
        push.start()
        running = wait_for_stage_job(
            server, transfer_stages.DESERIALIZING, "push", timeout=300
        )
        outcome.polled = _poll(server, running["transfer_session_id"])
        outcome.push = push.wait(timeout=600)
        outcome.job = [
            job for job in list_stage_jobs(server) if job["job_id"] == running["job_id"]
        ][0]
        outcome.running = running
        outcome.server_log = server.log_tail()
    return outcome


def _poll(server, transfer_session_id):
    """
    A client's poll of the transfer session. A poll that writes waits for the
    stage's transaction on SQLite, so it may take as long as the stage.

    :return: The transfer session as the poll returned it, or the error
    :rtype: dict
    """
    try:
        response = requests.get(
            "{}{}{}/".format(
                server.base_url.rstrip("/"), TRANSFER_SESSIONS_PATH, transfer_session_id
            ),
            timeout=300,
        )
        return response.json()
    except requests.RequestException as e:
        return {"error": repr(e)}


def test_worker_in_own_pid_namespace__ran_the_stage_under_a_pid_unknown_here(
    pushed_while_polled,
):
    assert pushed_while_polled.running["worker_process"] == str(
        pushed_while_polled.worker_pid
    )


def test_worker_in_own_pid_namespace__poll_while_it_runs__stage_still_started(
    pushed_while_polled,
):
    polled = pushed_while_polled.polled
    assert polled.get("transfer_stage_status") == "started", polled


def test_worker_in_own_pid_namespace__push_completes(pushed_while_polled):
    assert pushed_while_polled.push.ok, "client:\n{}\n\nserver log:\n{}".format(
        pushed_while_polled.push.tail(), pushed_while_polled.server_log
    )


def test_worker_in_own_pid_namespace__job_completed(pushed_while_polled):
    assert pushed_while_polled.job["job_state"] == "COMPLETED", pushed_while_polled.job
