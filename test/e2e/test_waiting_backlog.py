"""
Ten stage jobs waiting for the writers' turn on a real server on SQLite (the lab
holds the turn, as a long stage would) cost Kolibri's own jobs nothing: a regular
Kolibri job queued behind them finishes promptly, the waiting jobs are run only
now and then rather than in a loop over job storage, and once the turn is free
every one of them runs its stage.

The server has a small device's workers, one regular and one high-priority: with
Kolibri's default six, a backlog retried in a loop still leaves a worker free now
and then, and only the loop over job storage shows.
"""

import uuid
from types import SimpleNamespace

import pytest

from sync_lab.harness.backlog import count_waiting_stage_runs
from sync_lab.harness.backlog import time_a_kolibri_job
from sync_lab.harness.backlog import wait_for_backlog_to_drain
from sync_lab.harness.flood import ask_for_stages
from sync_lab.harness.flood import holding_the_writers_turn
from sync_lab.harness.flood import open_sync_sessions
from sync_lab.harness.flood import wait_for_unfinished_stage_jobs

from ..helpers.constants import BACKGROUND_EVERYTHING

pytestmark = pytest.mark.e2e

WAITING = 10
#: Seconds over which the waiting jobs' runs are counted.
WINDOW = 20
#: The most a regular Kolibri job may take behind the backlog, in seconds.
KOLIBRI_JOB_BOUND = 30
#: The most runs per waiting job and second: one backing off to every 4 s runs
#: about 0.25 times a second, one retried every 0.5 s up to twice a second.
MAX_RUNS_PER_JOB_PER_SECOND = 0.5
SMALL_DEVICE_WORKERS = {"REGULAR_PRIORITY_WORKERS": 1, "HIGH_PRIORITY_WORKERS": 1}


@pytest.fixture(scope="module")
def backlog(tmp_path_factory, lab_templates, lab_report):
    root = tmp_path_factory.mktemp("backlog")
    server, facility = lab_templates.new_server(
        "sqlite",
        "backlogged-server",
        root=root,
        plugin=True,
        sync_options=dict(BACKGROUND_EVERYTHING, MAX_STAGE_JOBS_PER_CLIENT=WAITING),
        options={"Tasks": SMALL_DEVICE_WORKERS},
    )
    outcome = SimpleNamespace()
    with server:
        server.start()
        sessions = server.call(
            open_sync_sessions,
            count=WAITING,
            client_instance_id=uuid.uuid4().hex,
            facility_id=facility["id"],
        )
        with holding_the_writers_turn(server):
            outcome.answers = ask_for_stages(
                server.base_url, sessions["sync_session_ids"], sessions["filter"]
            )
            outcome.waiting = server.call(
                wait_for_unfinished_stage_jobs, count=WAITING, wait=60
            )
            outcome.kolibri_job = server.call(
                time_a_kolibri_job, wait=KOLIBRI_JOB_BOUND * 4
            )
            outcome.runs = server.call(count_waiting_stage_runs, seconds=WINDOW)
        outcome.drained = server.call(
            wait_for_backlog_to_drain,
            transfer_session_ids=[a["transfer_session_id"] for a in outcome.answers],
            wait=300,
        )
        outcome.server_log = server.log_tail(40)
    runs = outcome.runs
    outcome.runs_per_second = runs["runs"] / runs["seconds"]
    print(
        "\nregular Kolibri job behind {} waiting stage jobs: {} after {} s".format(
            WAITING, outcome.kolibri_job["state"], outcome.kolibri_job["seconds"]
        )
    )
    print(
        "waiting stage jobs run {} times in {} s: {:.2f} runs/s".format(
            runs["runs"], runs["seconds"], outcome.runs_per_second
        )
    )
    print(
        "backlog drained {} s after the turn was freed".format(
            outcome.drained["seconds"]
        )
    )
    lab_report(
        "regular Kolibri job behind {} waiting stage jobs".format(WAITING),
        "{} s".format(outcome.kolibri_job["seconds"]),
    )
    lab_report(
        "runs of {} waiting stage jobs".format(WAITING),
        "{:.2f} per s".format(outcome.runs_per_second),
    )
    return outcome


def test_backlog__every_stage__queued_to_wait(backlog):
    assert [a["stage_status"] for a in backlog.answers] == ["started"] * WAITING
    assert len(backlog.waiting) >= WAITING


def test_backlog__regular_kolibri_job__finishes_within_the_bound(backlog):
    assert backlog.kolibri_job["state"] == "COMPLETED"
    assert backlog.kolibri_job["seconds"] <= KOLIBRI_JOB_BOUND


def test_backlog__waiting_jobs__run_only_now_and_then(backlog):
    assert backlog.runs["jobs"] == WAITING
    assert backlog.runs_per_second <= MAX_RUNS_PER_JOB_PER_SECOND * WAITING, (
        backlog.runs
    )


def test_backlog__turn_freed__every_waiting_job_runs_its_stage(backlog):
    jobs = backlog.drained["jobs"].values()

    assert [job["state"] for job in jobs] == ["COMPLETED"] * WAITING, backlog.server_log
    assert all(job["ran"] for job in jobs), backlog.drained
    assert [job["stage_status"] for job in jobs] == ["completed"] * WAITING
