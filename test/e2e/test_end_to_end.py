"""
End to end: a stock Kolibri client syncs with a Kolibri server that runs this
plugin, both real instances in subprocesses with their own homes, on 127.0.0.1.

The server runs ``kolibri start``, so its HTTP server and its job workers are the
ones a deployment runs. Each mode of the server gets fresh copies of the run's
provisioned server home (on SQLite, or on PostgreSQL) and migrated client home; the
tests of a mode share its round trip (pull, new client records, push) and each
checks one thing about it.

These tests use no in-process database: they only start processes and read what
the instances report.
"""

import pytest

from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.scenario import round_trip

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PULL_STAGES
from ..helpers.constants import PUSH_STAGES
from ..helpers.round_trips import assert_counted_alike
from ..helpers.round_trips import assert_server_has_both_sides_learners
from ..helpers.round_trips import completed_stage_jobs
from ..helpers.round_trips import failed_round_trip_sync

pytestmark = pytest.mark.e2e

CLIENT_RECORDS = 120


#: The server's ``[Sync]`` options per mode, and the stage jobs each must run.
MODES = {
    "plugin_on": (
        BACKGROUND_EVERYTHING,
        PULL_STAGES | PUSH_STAGES,
    ),
    "plugin_off": (
        {"BACKGROUND_INITIALIZATION": False, "BACKGROUND_FINALIZATION": False},
        set(),
    ),
    # Kolibri's workers cannot start a job in worker processes (0.18 on): every
    # stage runs in the request; a stage job would be given up after 30 s
    "plugin_on_worker_processes": (
        dict(BACKGROUND_EVERYTHING, STAGE_JOB_START_TIMEOUT=30),
        set(),
    ),
}
#: Other options.ini sections of a mode's server.
OTHER_OPTIONS = {
    "plugin_on_worker_processes": {"Tasks": {"USE_WORKER_MULTIPROCESSING": True}}
}
#: Modes whose server keeps its data in PostgreSQL, and the mode whose options it runs.
ON_POSTGRES = {"plugin_on_postgres": "plugin_on"}


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sync-lab")


@pytest.fixture(scope="module", params=sorted(MODES) + sorted(ON_POSTGRES))
def mode(request):
    return request.param


@pytest.fixture(scope="module")
def synced(mode, lab_root, lab_templates):
    """The round trip of one mode, with the server's stage jobs and record counts."""
    sync_options, expected_jobs = MODES[ON_POSTGRES.get(mode, mode)]
    server, facility = lab_templates.new_server(
        "postgresql" if mode in ON_POSTGRES else "sqlite",
        "server-" + mode,
        root=lab_root,
        plugin=True,
        sync_options=sync_options,
        options=OTHER_OPTIONS.get(mode),
    )
    client = lab_templates.new_client("client-" + mode, root=lab_root)
    with server, client:
        server.start()
        outcome = round_trip(
            server, client, facility, CLIENT_RECORDS, expected_jobs=expected_jobs
        )
        outcome.expected_jobs = expected_jobs
        outcome.server = server
        yield outcome


def _job_summary(outcome):
    return [
        (job["direction"], job["stage"], job["job_state"], job["detail"])
        for job in outcome.jobs
    ]


def test_pull__exits_0(synced):
    assert synced.pull.ok, failed_round_trip_sync(synced, synced.pull)


def test_push__exits_0(synced):
    assert synced.push is not None, "the pull failed, so nothing was pushed"
    assert synced.push.ok, failed_round_trip_sync(synced, synced.push)


def test_push__client_records_were_created(synced):
    assert synced.client_created["total"] > 0, synced.client_created


@pytest.mark.parametrize("kind", COUNTED)
def test_counts__equal_on_both_sides(synced, kind):
    assert_counted_alike(synced, kind)


def test_counts__include_both_sides_records(synced):
    assert_server_has_both_sides_learners(synced)


def test_stage_jobs__each_configured_stage_completed(synced):
    completed = completed_stage_jobs(synced)
    assert completed == synced.expected_jobs, _job_summary(synced)


def test_stage_jobs__one_job_per_stage_and_session(synced):
    served = [(job["transfer_session_id"], job["stage"]) for job in synced.jobs]
    assert len(served) == len(set(served)), _job_summary(synced)


def test_stage_jobs__none_failed(synced):
    failed = [job for job in synced.jobs if job["job_state"] != "COMPLETED"]
    assert not failed, "{}\n\nserver log:\n{}".format(
        _job_summary(synced), synced.server.log_tail()
    )


def test_server_log__warns_of_worker_processes_only_where_they_are_on(synced, mode):
    log = synced.server.log_path.read_text(errors="replace")
    warned = "[Tasks] USE_WORKER_MULTIPROCESSING is on" in log
    assert warned == ("Tasks" in OTHER_OPTIONS.get(mode, {}))
