"""
A client that opens transfer sessions and asks for stages in a loop, against a
real server on SQLite whose stage jobs cannot run yet (the lab holds the writers'
turn, as a long stage would): the client gets as many stage jobs as its cap
allows and every further stage is refused with a 503 naming the cap, while
another client's sync goes through and Kolibri's own jobs keep running.
"""

import uuid
from types import SimpleNamespace

import pytest

from sync_lab.harness.faults import BackgroundSync
from sync_lab.harness.flood import ask_for_stages
from sync_lab.harness.flood import enqueue_kolibri_job
from sync_lab.harness.flood import holding_the_writers_turn
from sync_lab.harness.flood import open_sync_sessions
from sync_lab.harness.flood import stage_jobs_of_sessions
from sync_lab.harness.flood import wait_for_job
from sync_lab.harness.flood import wait_for_unfinished_stage_jobs
from sync_lab.harness.scenario import DEFAULT_CREDENTIALS

from ..helpers.constants import BACKGROUND_EVERYTHING

pytestmark = pytest.mark.e2e

PER_CLIENT_CAP = 2
ASKED = 5


@pytest.fixture(scope="module")
def flood(tmp_path_factory, lab_templates):
    root = tmp_path_factory.mktemp("flood")
    server, facility = lab_templates.new_server(
        "sqlite",
        "flooded-server",
        root=root,
        plugin=True,
        sync_options=dict(
            BACKGROUND_EVERYTHING,
            MAX_STAGE_JOBS_PER_CLIENT=PER_CLIENT_CAP,
            # clear finished stage jobs of closed sessions at once, every 2 s
            COMPLETED_STAGE_JOB_RETENTION=0,
            STAGE_JOB_CLEANUP_INTERVAL=2,
        ),
    )
    other = lab_templates.new_client("other-client", root=root)
    outcome = SimpleNamespace()
    flooder = uuid.uuid4().hex
    with server, other:
        server.start()
        sessions = server.call(
            open_sync_sessions,
            count=ASKED,
            client_instance_id=flooder,
            facility_id=facility["id"],
        )
        with holding_the_writers_turn(server):
            outcome.answers = ask_for_stages(
                server.base_url, sessions["sync_session_ids"], sessions["filter"]
            )
            kolibri_job = server.call(enqueue_kolibri_job)
            outcome.kolibri_job_state = server.call(
                wait_for_job, job_id=kolibri_job, wait=60
            )
            sync = BackgroundSync(
                other,
                server.base_url,
                facility["id"],
                DEFAULT_CREDENTIALS.username,
                DEFAULT_CREDENTIALS.password,
                push=False,
                timeout=600,
            )
            sync.start()
            # the other client's first stage waits beside the flooder's
            outcome.waiting_for = server.call(
                wait_for_unfinished_stage_jobs, count=PER_CLIENT_CAP + 1, wait=180
            )
        outcome.other_sync = sync.wait(600)
        outcome.jobs_after = server.call(stage_jobs_of_sessions, wait=60)
        outcome.server_log = server.log_tail(60)
        with open(server.log_path, errors="replace") as log:
            outcome.refusals_logged = [
                line
                for line in log
                if "Refused stage serializing" in line
                and "MAX_STAGE_JOBS_PER_CLIENT = {}".format(PER_CLIENT_CAP) in line
            ]
    outcome.flooder = sessions["client_key"]
    return outcome


def test_flooding_client__stages_up_to_its_cap__accepted(flood):
    accepted = [a for a in flood.answers if a["status"] == 200]

    assert len(accepted) == PER_CLIENT_CAP
    assert {a["stage_status"] for a in accepted} == {"started"}


def test_flooding_client__stages_past_its_cap__refused_with_503_naming_it(flood):
    refused = flood.answers[PER_CLIENT_CAP:]

    assert [a["status"] for a in refused] == [503] * (ASKED - PER_CLIENT_CAP)
    assert all(
        "[Sync] MAX_STAGE_JOBS_PER_CLIENT = {}".format(PER_CLIENT_CAP) in a["detail"]
        for a in refused
    )


def test_flooding_client__each_refusal__logged_by_the_server(flood):
    assert len(flood.refusals_logged) == ASKED - PER_CLIENT_CAP


def test_flooding_client__kolibri_job_of_another_kind__still_runs(flood):
    assert flood.kolibri_job_state == "COMPLETED"


def test_flooding_client__another_clients_stage__queued_beside_it(flood):
    others = [c for c in flood.waiting_for if c != flood.flooder]

    assert len(others) >= 1, flood.waiting_for


def test_flooding_client__another_clients_sync__completes(flood):
    assert flood.other_sync.ok, flood.other_sync.tail() + "\n" + flood.server_log


def test_retention__stage_jobs_of_closed_sessions__cleared(flood):
    assert flood.jobs_after["closed"] == 0


def test_retention__stage_jobs_of_open_sessions__kept(flood):
    """The flooding client never closed its pulls: its accepted stages' jobs stay."""
    assert flood.jobs_after["open"] == PER_CLIENT_CAP


@pytest.fixture(scope="module")
def refused_sync(tmp_path_factory, lab_templates):
    """
    A stock client's pull while the server's only stage job place is taken: the
    total cap is 1 and a flooding client's stage waits in it.
    """
    root = tmp_path_factory.mktemp("refused")
    server, facility = lab_templates.new_server(
        "sqlite",
        "full-server",
        root=root,
        plugin=True,
        sync_options=dict(BACKGROUND_EVERYTHING, MAX_STAGE_JOBS=1),
    )
    client = lab_templates.new_client("refused-client", root=root)
    with server, client:
        server.start()
        sessions = server.call(
            open_sync_sessions,
            count=1,
            client_instance_id=uuid.uuid4().hex,
            facility_id=facility["id"],
        )
        with holding_the_writers_turn(server):
            ask_for_stages(
                server.base_url, sessions["sync_session_ids"], sessions["filter"]
            )
            return client.sync(
                server.base_url,
                facility["id"],
                DEFAULT_CREDENTIALS.username,
                DEFAULT_CREDENTIALS.password,
                push=False,
                timeout=600,
                check=False,
            )


def test_total_cap_reached__stock_clients_sync__fails(refused_sync):
    assert not refused_sync.ok


def test_total_cap_reached__stock_clients_output__names_the_cap(refused_sync):
    assert "[Sync] MAX_STAGE_JOBS = 1" in refused_sync.output, refused_sync.tail()
