"""
Job workers on two hosts sharing one PostgreSQL database, as a large deployment
runs them: the HTTP process, and two ``kolibri services`` each with a
``KOLIBRI_HOME`` of its own and in a pid namespace of its own, so neither's pid
means anything to the others.

- A worker killed in the middle of a stage cannot be told dead by its pid from
  here; its run's claim on PostgreSQL dies with its connection, so the client's
  next poll fails the stage and the client stops within the bound. The retry
  runs on the other host and leaves both sides equal.
- When the killed worker starts again, Kolibri requeues every running job of job
  storage, including the one the other host is running: the stage job runs twice
  at once. The second run waits for the first's claim, then finds the stage
  settled and touches nothing; the push completes with each record once.

The module's tests share one deployment and one client, in that order.
"""

import time
from types import SimpleNamespace

import pytest
from morango.constants import transfer_stages

from sync_lab.harness.checks import sync_states
from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.dataset import generate_activity
from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.jobs import wait_for_stage_job
from sync_lab.harness.jobs import wait_for_stage_jobs
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS
from sync_lab.harness.split import SplitKolibriInstance

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PUSH_STAGES
from ..helpers.round_trips import assert_job_failed_as_worker_gone
from ..helpers.round_trips import assert_no_row_twice
from ..helpers.round_trips import assert_stopped_at_failed_stage
from ..helpers.worker_processes import free_pid

pytestmark = pytest.mark.e2e

#: Enough records that deserializing them takes seconds: time to kill a worker.
KILLED_PUSH_RECORDS = 1500
#: Enough that deserializing outlasts a worker's start (several seconds).
RUN_TWICE_PUSH_RECORDS = 4000
#: How soon the client must stop after the worker died: one poll interval (morango
#: backs off to 5 s at most) and the poll, with room for a busy machine.
DETECTION_BOUND_SECONDS = 20


def _needs_namespaces():
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a pid namespace needs root and unshare")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, lab_templates):
    """
    The HTTP process and worker host A (the server's home), worker host B (a home
    of its own on the same database), both workers running, and a client that has
    pulled once.
    """
    _needs_namespaces()
    root = tmp_path_factory.mktemp("worker-hosts")
    server, facility = lab_templates.new_server(
        "postgresql",
        "hosts-server",
        root=root,
        instance_class=SplitKolibriInstance,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    host_b = SplitKolibriInstance.copy_of(
        server,
        "worker-host-b",
        root=root,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
        options=server.options,
    )
    client = lab_templates.new_client("hosts-client", root=root)
    hosts = {"A": server, "B": host_b}
    with server, host_b, client:
        server.start()
        pids = {}
        for name, host in hosts.items():
            pids[name] = free_pid() + (0 if name == "A" else 1000)
            host.start_worker(pid_namespace_pid=pids[name])
        sync_args = (
            server.base_url,
            facility["id"],
            DEFAULT_CREDENTIALS.username,
            DEFAULT_CREDENTIALS.password,
        )
        pull = client.sync(*sync_args, push=False, timeout=600, check=False)
        assert pull.ok, pull.tail()
        yield SimpleNamespace(
            server=server,
            hosts=hosts,
            pids=pids,
            client=client,
            facility=facility,
            sync_args=sync_args,
        )


def _push_new_records(deployment, records, prefix, seed):
    deployment.client.call(
        generate_activity,
        records=records,
        facility_id=deployment.facility["id"],
        prefix=prefix,
        seed=seed,
        existing_share=0.5,
    )
    push = BackgroundSync(
        deployment.client, *deployment.sync_args, pull=False, timeout=600
    )
    push.start()
    return push


def _host_running(deployment, job):
    """Which worker host runs ``job``: the pid it has in its own namespace."""
    for name, pid in deployment.pids.items():
        if job["worker_process"] == str(pid):
            return name
    raise AssertionError("no worker host has pid {}".format(job["worker_process"]))


def _states(deployment):
    server, [client] = sync_states(
        deployment.server, [deployment.client], deployment.facility["id"]
    )
    return server, client


@pytest.fixture(scope="module")
def host_killed(deployment, lab_report):
    """A push whose deserializing job's worker host is SIGKILLed mid-stage; the retry."""
    outcome = SimpleNamespace()
    push = _push_new_records(deployment, KILLED_PUSH_RECORDS, "host_killed", 11)
    outcome.job = wait_for_stage_job(
        deployment.server, transfer_stages.DESERIALIZING, "push", timeout=300
    )
    outcome.killed_host = _host_running(deployment, outcome.job)
    deployment.hosts[outcome.killed_host].kill_worker()
    killed_at = time.monotonic()
    outcome.push = push.wait(timeout=600)
    outcome.detected_after = push.ended - killed_at
    lab_report(
        "worker host killed during deserializing (PostgreSQL): client stopped after",
        "{:.1f} s (exit {})".format(outcome.detected_after, outcome.push.returncode),
    )
    # the other host is still running: the retry's stages run there
    outcome.retry = deployment.client.sync(
        *deployment.sync_args, timeout=600, check=False
    )
    outcome.retry_jobs = wait_for_stage_jobs(deployment.server, PUSH_STAGES)
    outcome.server, outcome.client = _states(deployment)
    outcome.server_log = deployment.server.log_tail()
    return outcome


@pytest.fixture(scope="module")
def run_twice(host_killed, deployment, lab_report):
    """
    A push whose deserializing job runs on the surviving host while the killed
    host's worker starts again, which requeues that running job.
    """
    outcome = SimpleNamespace()
    survivor = "B" if host_killed.killed_host == "A" else "A"
    restarted = deployment.hosts[host_killed.killed_host]
    push = _push_new_records(deployment, RUN_TWICE_PUSH_RECORDS, "run_twice", 12)
    outcome.job = wait_for_stage_job(
        deployment.server, transfer_stages.DESERIALIZING, "push", timeout=300
    )
    outcome.first_host = _host_running(deployment, outcome.job)
    restarted.start_worker(pid_namespace_pid=deployment.pids[host_killed.killed_host])
    outcome.push = push.wait(timeout=600)
    wait_for_stage_jobs(deployment.server, PUSH_STAGES)
    outcome.survivor = survivor
    outcome.logs = "\n".join(host.log_tail(400) for host in deployment.hosts.values())
    outcome.server, outcome.client = _states(deployment)
    return outcome


# -- a worker host killed in the middle of a stage ------------------------------


def test_host_killed__client_sync_stops_with_an_error(host_killed):
    assert_stopped_at_failed_stage(host_killed.push, transfer_stages.DESERIALIZING)


def test_host_killed__client_stops_within_the_bound(host_killed):
    assert host_killed.detected_after < DETECTION_BOUND_SECONDS


def test_host_killed__job_failed_as_worker_gone(host_killed):
    assert_job_failed_as_worker_gone(host_killed.server, host_killed.job["job_id"])


def test_host_killed__retry_on_the_other_host_completes(host_killed):
    assert host_killed.retry.ok, "client:\n{}\n\nserver log:\n{}".format(
        host_killed.retry.tail(), host_killed.server_log
    )


@pytest.mark.parametrize("kind", COUNTED)
def test_host_killed__after_the_retry_counts_equal_on_both_sides(host_killed, kind):
    server, client = host_killed.server["counts"], host_killed.client["counts"]
    assert server[kind] == client[kind], (server, client)


def test_host_killed__after_the_retry_no_row_twice(host_killed):
    assert_no_row_twice(host_killed.server, host_killed.client)


# -- a stage job run twice at once ------------------------------------------------


def test_run_twice__the_job_ran_on_the_surviving_host(run_twice):
    assert run_twice.first_host == run_twice.survivor


def test_run_twice__the_second_run_waited_for_the_first(run_twice):
    assert "is already running elsewhere" in run_twice.logs


def test_run_twice__push_completes(run_twice):
    assert run_twice.push.ok, run_twice.push.tail()


@pytest.mark.parametrize("kind", COUNTED)
def test_run_twice__counts_equal_on_both_sides(run_twice, kind):
    server, client = run_twice.server["counts"], run_twice.client["counts"]
    assert server[kind] == client[kind], (server, client)


def test_run_twice__no_row_twice(run_twice):
    assert_no_row_twice(run_twice.server, run_twice.client)


def test_run_twice__nothing_left_to_deserialize(run_twice):
    assert run_twice.server["undeserialized"] == 0
