"""
End to end across Kolibri release lines: a server with this plugin, both of its
background switches on, syncs with a stock client of another line.

Deployments upgrade slowly, so a server meets clients older than itself, and a
server that was never upgraded meets new tablets. Each pair gets its own copies of
the line's template homes, runs the lab's round trip (pull, new client records,
push), and each test checks one thing about it. A line that is not installed in
this checkout (``make venv KOLIBRI=0.16``) is skipped, except under CI.
"""

import json

import pytest

from sync_lab.harness.dataset import COUNTED
from sync_lab.harness.lines import kolibri_version
from sync_lab.harness.scenario import round_trip

from ..helpers.constants import BACKGROUND_EVERYTHING
from ..helpers.constants import PULL_STAGES
from ..helpers.constants import PUSH_STAGES
from ..helpers.round_trips import assert_counted_alike
from ..helpers.round_trips import assert_server_has_both_sides_learners
from ..helpers.round_trips import completed_stage_jobs
from ..helpers.round_trips import failed_round_trip_sync
from .test_end_to_end import CLIENT_RECORDS

pytestmark = pytest.mark.e2e

#: ``(server line, client line)``: the oldest server with the newest client, the
#: newest server with a client of every older line, and a server of the last line
#: with job storage in SQLAlchemy with the oldest client.
PAIRS = (
    ("0.16", "0.19"),
    ("0.18", "0.16"),
    ("0.19", "0.16"),
    ("0.19", "0.17"),
    ("0.19", "0.18"),
)


@pytest.fixture(scope="module")
def lab_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sync-lab-lines")


@pytest.fixture(
    scope="module",
    params=PAIRS,
    ids=["server-{}-client-{}".format(*pair) for pair in PAIRS],
)
def synced(request, lab_root, line_templates):
    """The round trip of one pair, with the server's stage jobs and record counts."""
    server_line, client_line = request.param
    # each copy runs the Kolibri line that made its template
    server, facility = line_templates(server_line).new_server(
        "sqlite",
        "server-" + server_line,
        root=lab_root,
        plugin=True,
        sync_options=BACKGROUND_EVERYTHING,
    )
    client = line_templates(client_line).new_client(
        "client-" + client_line, root=lab_root
    )
    with server, client:
        server.start()
        outcome = round_trip(
            server,
            client,
            facility,
            CLIENT_RECORDS,
            expected_jobs=PULL_STAGES | PUSH_STAGES,
        )
        outcome.lines = request.param
        outcome.versions = (
            kolibri_version(server.python),
            kolibri_version(client.python),
        )
        outcome.server = server
        outcome.status = server.manage("sync_extras_status", "--json", check=False)
        yield outcome


def _job_summary(outcome):
    return [
        (job["direction"], job["stage"], job["job_state"], job["detail"])
        for job in outcome.jobs
    ]


def test_lines__each_instance_runs_its_line(synced):
    server_version, client_version = synced.versions
    server_line, client_line = synced.lines
    assert server_version.startswith(server_line + "."), synced.versions
    assert client_version.startswith(client_line + "."), synced.versions


def test_pull__exits_0(synced):
    assert synced.pull.ok, failed_round_trip_sync(synced, synced.pull)


def test_push__exits_0(synced):
    assert synced.push is not None, "the pull failed, so nothing was pushed"
    assert synced.push.ok, failed_round_trip_sync(synced, synced.push)


@pytest.mark.parametrize("kind", COUNTED)
def test_counts__equal_on_both_sides(synced, kind):
    assert_counted_alike(synced, kind)


def test_counts__include_both_sides_records(synced):
    assert_server_has_both_sides_learners(synced)


def test_stage_jobs__every_server_stage_completed_in_a_job(synced):
    completed = completed_stage_jobs(synced)
    assert completed == PULL_STAGES | PUSH_STAGES, _job_summary(synced)


def test_stage_jobs__none_failed(synced):
    failed = [job for job in synced.jobs if job["job_state"] != "COMPLETED"]
    assert not failed, "{}\n\nserver log:\n{}".format(
        _job_summary(synced), synced.server.log_tail()
    )


def test_status_command__after_the_sync__every_stage_done_and_exits_0(synced):
    status = synced.status
    # kolibri manage prints its own log lines first: the report is the last line
    report = json.loads(status.output.strip().splitlines()[-1])
    assert status.returncode == 0, status.tail()
    assert report["healthy"] is True
    assert sorted((s["direction"], s["stage"]) for s in report["stages"]) == sorted(
        PULL_STAGES | PUSH_STAGES
    )
    assert {s["job_state"] for s in report["stages"]} == {"COMPLETED"}
